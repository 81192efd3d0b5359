"""Who may call: API keys as bearer tokens, and a rate limit per key.

Keys are stored as SHA-256 digests (`name:hex` lines), never in clear. An API key is a random
secret of 128 bits or more (e.g. `openssl rand -hex 32`), not a password, so a fast hash is the
right one: there is nothing to brute-force, and a slow hash would cost every call milliseconds.
A presented key is hashed and compared with *every* stored digest with `hmac.compare_digest`
(no early exit), so the time taken says nothing about which digest, or how much of it, matched.
Keys never reach a log line or a metric label; the key's *name* (from the file) may.

The rate limit is a token bucket per key name: `rate` calls per second sustained, `burst` at once.
Without keys, every caller shares the bucket `anonymous`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import stat
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from services.core.errors import ConfigError
from services.gateway.errors import RateLimited, Unauthenticated

ANONYMOUS = "anonymous"
_HEX = re.compile(r"[0-9a-fA-F]{64}")


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def parse_entries(lines: Iterable[str], where: str, before: int = 0) -> list[tuple[str, bytes]]:
    """`name:hex` or `hex` entries ('#' comments and blank lines skipped); an unnamed one is
    key<n>, counted after the `before` entries of other sources."""
    entries: list[tuple[str, bytes]] = []
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        name, _, hexdigest = text.rpartition(":")
        if not _HEX.fullmatch(hexdigest):
            # The line itself is not shown: it might be a key pasted by mistake.
            raise ConfigError(f"{where} entry {number}: expected name:<64 hex digits of sha256(key)>")
        entries.append((name.strip() or f"key{before + len(entries) + 1}", bytes.fromhex(hexdigest)))
    return entries


def _distinct_names(entries: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """Each name one key: a name is what identifies a caller (its rate limit, its request ids)."""
    named: dict[str, bytes] = {}
    for name, stored in entries:
        if named.setdefault(name, stored) != stored:
            raise ConfigError(f"two different API keys are both named {name!r}: they would share a rate limit and "
                              "each other's request ids; give each key its own name")
    return list(named.items())


class ApiKeys:
    """The keys in force: --api-key-hashes and --api-keys-file's, the file read again when it
    changes (`reload_if_changed`), so that a key is added or revoked without a restart."""

    def __init__(self, entries: list[tuple[str, bytes]], file: str = "", inline: Iterable[str] = (),
                 text: str | None = None):
        self._entries = entries
        self._file, self._inline = file, tuple(inline)
        self._applied = text  # the file's text the keys in force came from
        self._refused: str | None = None  # the text or failure last refused, said once

    @classmethod
    def load(cls, file: str, inline: Iterable[str]) -> ApiKeys:
        inline = tuple(inline)
        text = _read_keys_file(file) if file else None
        return cls(_entries(file, text, inline), file, inline, text)

    def reload_if_changed(self) -> tuple[bool, str] | None:
        """Read the keys file again; if it changed, its keys replace those in force: (True, what
        changed). A file that no longer reads as keys (emptied, half-written, a line that is no
        digest, unreadable) is refused and the keys in force stay: (False, why), once per
        refused content. None: no file, or unchanged."""
        if not self._file:
            return None
        try:
            text = _read_keys_file(self._file)
            if text == self._applied:
                self._refused = None
                return None
            entries = _entries(self._file, text, self._inline)
        except ConfigError as exc:
            if self._refused == str(exc):
                return None
            self._refused = str(exc)
            return False, str(exc)
        before = self._entries
        self._entries, self._applied, self._refused = entries, text, None  # calls see the old keys or the new
        return True, _change(before, entries)

    @property
    def enabled(self) -> bool:
        return bool(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def identify(self, authorization: str | None) -> str:
        """The name of the key in an `Authorization: Bearer <key>` value; `Unauthenticated` if none."""
        entries = self._entries  # once: a reload (another thread) may replace them meanwhile
        if not entries:
            return ANONYMOUS
        if not authorization:
            raise Unauthenticated("an API key is required: send Authorization: Bearer <key>")
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("the Authorization header must be: Bearer <key>")
        presented = digest(token.strip())
        found = ""
        for name, stored in entries:
            if hmac.compare_digest(presented, stored) and not found:
                found = name
        if not found:
            raise Unauthenticated("the API key is not valid")
        return found


def _read_keys_file(file: str) -> str:
    try:
        mode = Path(file).stat().st_mode
        if not stat.S_ISREG(mode):  # a FIFO would hold the reading thread for good
            raise ConfigError(f"--api-keys-file {file} is not a regular file")
        if mode & stat.S_IWOTH:
            # Re-read every few seconds: any user who can write it adds a key of their own (a review).
            # Its group may (umask 002, a volume's fsGroup): a deliberate share.
            raise ConfigError(f"--api-keys-file {file} is writable by every user (mode {stat.S_IMODE(mode):04o}): "
                              f"anyone can let themselves in; chmod o-w {file}")
        _check_directory(file)
        return Path(file).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read --api-keys-file {file}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"--api-keys-file {file} is not text: expected lines of "
                          "name:<64 hex digits of sha256(key)>") from None


def _check_directory(file: str) -> None:
    """ConfigError when every user may put a file of their own in place of `file`: its directory is
    writable by all without the sticky bit (a review: the file's own mode was checked alone). The
    owner is not checked: a file mounted into a container is often another user's (the host's)."""
    folder = Path(file).parent
    mode = folder.stat().st_mode
    if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
        raise ConfigError(f"--api-keys-file {file}: its directory {folder} is writable by every user (mode "
                          f"{stat.S_IMODE(mode):04o}): anyone can put keys of their own in its place; "
                          f"chmod o-w {folder}")


def _entries(file: str, text: str | None, inline: tuple[str, ...]) -> list[tuple[str, bytes]]:
    """The keys of --api-key-hashes (`inline`) and of the keys file's `text` (None: no file)."""
    entries = parse_entries(inline, "--api-key-hashes")
    if not entries and inline:
        # Given, but blank (' , '): read as "no keys", it let every caller in.
        raise ConfigError("--api-key-hashes holds no key (leave it out to let every caller in)")
    if text is not None:
        from_file = parse_entries(text.splitlines(), file, before=len(entries))
        if not from_file and not entries:
            # An empty file would let every caller in: most likely not what its operator meant.
            raise ConfigError(f"--api-keys-file {file} holds no key (leave the flag out to let every caller in)")
        entries += from_file
    return _distinct_names(entries)


def _change(before: list[tuple[str, bytes]], after: list[tuple[str, bytes]]) -> str:
    """What a reload changed, by key name (names may be logged; keys never are)."""
    old, new = dict(before), dict(after)
    changes = [f"{len(new)} keys in force"]
    for what, names in (("added", new.keys() - old.keys()), ("revoked", old.keys() - new.keys()),
                        ("replaced", {n for n in old.keys() & new.keys() if old[n] != new[n]})):
        if names:
            changes.append(f"{what} {', '.join(sorted(names))}")
    if len(changes) == 1:
        changes.append("the keys unchanged (comments or spacing)")
    return "; ".join(changes)


class RateLimit:
    """Token buckets by key name (the names are few: they come from the key file), of `unit`s
    (calls, or rows: a call takes as many tokens as it has)."""

    def __init__(self, rate: float, burst: int, unit: str = "calls"):
        self.rate = rate
        self.burst = float(burst)
        self.unit = unit
        self._buckets: dict[str, tuple[float, float]] = {}  # name -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, name: str, cost: int = 1) -> None:
        if self.rate <= 0:
            return
        now = time.monotonic()
        with self._lock:
            tokens, at = self._buckets.get(name, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            if tokens < cost:
                self._buckets[name] = (tokens, now)
                wait = (cost - tokens) / self.rate
                asked = f"{cost} {self.unit} are " if cost > 1 else ""
                raise RateLimited(f"{asked}over the rate limit of {self.rate:g} {self.unit}/s for this key; retry in "
                                  f"{wait:.2f}s", retry_after_s=wait)
            self._buckets[name] = (tokens - cost, now)

    def give_back(self, name: str, cost: int = 1) -> None:
        """Return what `take` took for a call the gateway then refused for its own state."""
        if self.rate <= 0:
            return
        with self._lock:
            kept = self._buckets.get(name)
            if kept is not None:
                self._buckets[name] = (min(self.burst, kept[0] + cost), kept[1])
