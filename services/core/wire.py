"""What goes on the wire: single-object encoding (default) or schema-registry framing.

Set once per process, before any record is written (`configure`, called by every command
with its settings). Readers accept both framings whatever is written; registry-framed records
need `--schema-registry` to resolve their ids.

Writing with registry framing registers each record's schema under the subjects of the topics
that carry it, the Confluent default (TopicNameStrategy: `rdv.requests-value`, ...), so tools
such as ksqlDB find a topic's schema by its name.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any
from urllib.parse import urlsplit

from services.core.codec import CODEC_NAMES, Codec, codec
from services.core.errors import ConfigError, DecodeFailed, LookupsSpent
from services.core.futures import in_thread
from services.core.rate_limit import PerSecond
from services.core.registry import UNUSABLE, Outage, RegistryError, SchemaRegistry
from services.core.settings import KafkaSettings, Topics, check_wire_format

log = logging.getLogger(__name__)


# The record type each topic role carries (the contracts in docs/architecture.md).
ROLE_RECORDS = {
    "requests": "request", "scores": "score", "answers": "answer", "replies": "answer",
    "log": "comparison", "deadletter": "deadletter", "control": "schedule", "models": "model_info",
}


FORBIDDEN = 403


class Access:
    """Tells a 403 for one schema id apart: the id's own (a registry that checks access per
    subject, RBAC, may refuse this service one subject's schemas and give it others) or the
    registry's refusal of these credentials for now (rotated, a proxy). It asks for something the
    credentials were given before: an id read earlier, else the list of subjects. Granted, the 403
    is the id's; refused too, the registry's. A verdict stands `quiet_s`, so a flood of forbidden
    ids costs one such question per period. Shared by a process' record types, as its outage is."""

    def __init__(self, quiet_s: float = 5.0, clock: Callable[[], float] = time.monotonic):
        self.quiet_s = quiet_s
        self._clock = clock
        self.readable: int | None = None  # an id the registry gave us a schema for (the latest)
        self._granted_until = -math.inf
        self._refused_until = -math.inf

    def known(self) -> bool | None:
        """The verdict still standing: True granted, False refused, None to be asked."""
        now = self._clock()
        return True if now < self._granted_until else False if now < self._refused_until else None

    def remember(self, granted: bool) -> None:
        until = self._clock() + self.quiet_s
        self._granted_until, self._refused_until = (until, -math.inf) if granted else (-math.inf, until)


class IdLookup:
    """Schema ids to schemas, fetched from the registry. A failure that is the registry's (down,
    5xx, credentials refused, a redirect or a proxy's page: any answer but its own "not found") or
    this process' (more than `per_second` fetches, so a flood of records with made-up ids cannot
    turn the poll loop into a stream of HTTP calls: `LookupsSpent`) is `retriable`: the codec asks
    again later. The registry's own "no such schema" (404 with a 404xx error code), a 403 for an id
    while it gives these credentials other schemas (`Access`), or a schema nobody can read, is the
    id's: the codec remembers it, the first two for a while (`not_found`: codec.py
    NOT_FOUND_FOR_S), the third for good."""

    def __init__(self, registry: SchemaRegistry, per_second: int = 20, outage: Outage | None = None,
                 clock: Callable[[], float] = time.monotonic, access: Access | None = None):
        self.registry = registry
        self.per_second = per_second
        self._budget = PerSecond(per_second, clock)
        self._outage = outage or Outage()
        self._access = access or Access(clock=clock)
        # The call runs on a thread of its own, waited for at most the registry's timeout: the
        # timeout bounds each wait on the socket, and a reply's status line, headers or chunk
        # sizes trickled a byte at a time held the poll loop (every partition) as long as they
        # went on (a review measured 45 s for a 2 s timeout). One call at a time: one still
        # running when the next is asked for fails that one as "for now" (no thread piles up).
        # A daemon thread: one stuck in a trickled reply must not hold the process at its exit.
        self._running: Future[Any] | None = None

    def __call__(self, schema_id: int) -> Mapping[str, Any]:
        outage = self._outage.reason()
        if outage is not None:
            raise DecodeFailed(outage, retriable=True)
        if self._running is not None and not self._running.done():
            raise DecodeFailed(f"schema id {schema_id}: the registry is still answering an earlier lookup; asked "
                               "again later", retriable=True)
        self._spend()
        try:
            schema: dict[str, Any] = self._bounded(lambda: self.registry.schema(schema_id))
        except RegistryError as exc:
            # A 403 held the id's records, and their partition, until access was granted, when the
            # registry refuses this service that one subject alone (a review): it is the id's then.
            if exc.status == FORBIDDEN and self._others_granted(schema_id):
                refused = DecodeFailed(f"schema id {schema_id}: {exc}; the registry gives these credentials other "
                                       "schemas, not this one (access per subject?)")
                refused.not_found = True  # asked again after a while: access may be granted meanwhile
                raise refused from None
            # Only the registry's own "no such schema" (or one nobody can read) is the id's fault.
            # Any other refusal (a redirect, a proxy's 404 page, 407, 5xx) was remembered for the id,
            # and every valid record of it dead-lettered until a restart (a review).
            if not exc.permanent:
                self._outage.record(exc)
                raise DecodeFailed(str(exc), retriable=True) from None
            refused = DecodeFailed(f"schema id {schema_id}: {exc}")
            refused.not_found = exc.status != UNUSABLE  # a schema nobody can read stays unread
            raise refused from None
        self._access.readable = schema_id
        return schema

    def _bounded(self, call: Callable[[], Any]) -> Any:
        """`call`'s result, waited for at most the registry's timeout (and a second): a
        `RegistryError` when it failed or took longer."""
        self._running = in_thread(call, "rdv-registry")
        try:
            return self._running.result(timeout=self.registry.timeout_s + 1.0)
        except FutureTimeout:
            raise RegistryError(f"schema registry {self.registry.url}: no whole answer within "
                                f"{self.registry.timeout_s:g} s") from None

    def _others_granted(self, forbidden: int) -> bool:
        """Whether the registry gives these credentials what it gave them before (see `Access`)."""
        known = self._access.known()
        if known is not None:
            return known
        probe = self._access.readable
        try:
            if probe is not None and probe != forbidden:
                self._bounded(lambda: self.registry.schema(probe))
            else:
                self._bounded(self.registry.subjects)
            granted = True
        except RegistryError:
            granted = False
        self._access.remember(granted)
        return granted

    def _spend(self) -> None:
        if not self._budget.spend():
            raise LookupsSpent(f"more than {self.per_second} unseen schema ids in one second; not looked up")


def configure(settings: KafkaSettings, *, check_credentials: bool = True) -> None:
    """Apply `--wire-format` and `--schema-registry` to every codec of this process; the
    registry's credentials checked at once unless `check_credentials` is False."""
    check_wire_format(settings.wire_format, settings.schema_registry)  # as every command's settings do
    if not settings.schema_registry:
        return
    if credentials_in_clear(settings.schema_registry):
        log.warning("--schema-registry (value not shown) has a user and password and plain http: every request to "
                    "the registry sends them in clear; use https")
    registry = SchemaRegistry(settings.schema_registry)
    if settings.wire_format == "registry":
        register_all(registry, settings.topics())  # refused credentials fail it, in one line
    elif check_credentials:
        check_registry_credentials(registry)
    # Last: a check that failed leaves the process' codecs as they were (a test's, say, pointing
    # every later one of its process at a registry gone: their records waited for it).
    read_ids(registry, [codec(name) for name in CODEC_NAMES])


def credentials_in_clear(url: str) -> bool:
    """Whether a registry URL has a user or password and plain http (Basic auth, readable on the wire)."""
    parts = urlsplit(url)
    return parts.scheme.lower() == "http" and (parts.username is not None or parts.password is not None)


def read_ids(
    registry: SchemaRegistry, codecs: Iterable[Codec], per_second: int = 20, clock: Callable[[], float] = time.monotonic
) -> None:
    """Let `codecs` look unseen schema ids up in `registry`: each record type with lookups of its
    own (shared, a flood of made-up ids on the requests topic, which any client may write, spent
    the lookups of every topic: a worker's new Score schema id was dead-lettered with it), and one
    memory of the registry's outage (one record type that found it down spares the others a wait)."""
    outage, access = Outage(), Access(clock=clock)
    for reader in codecs:
        reader.read_registry_ids(IdLookup(registry, per_second, outage, clock, access))


def check_registry_credentials(registry: SchemaRegistry) -> None:
    """Credentials the registry refuses (401) are a misconfiguration, said at start in one line:
    found at the first registry-framed record, they held it, and its partition, for good. A
    registry away or refusing this one call otherwise is only warned of: records framed by it
    wait until it answers (schema_wait.py), as when it fails later."""
    try:
        registry.subjects()
    except RegistryError as exc:
        if exc.status == 401:
            given = "refused the credentials in its URL" if registry.has_credentials else \
                "needs credentials: give them as user:password@ in its URL"
            raise ConfigError(f"--schema-registry {given}: {exc}") from None
        if exc.status == 404 or (exc.status is not None and 300 <= exc.status < 400):
            # Every registry answers /subjects: a 404 or a redirect there is another server, or a
            # wrong base path (Apicurio's is /apis/ccompat/v7), and every record framed by it would
            # wait for good.
            raise ConfigError(f"--schema-registry answers no registry API there ({exc}): is the URL the "
                              "registry's, with its API path?") from None
        log.warning("schema registry not usable at start (%s): records framed by it wait until it answers", exc)


def register_all(registry: SchemaRegistry, topics: Topics) -> None:
    """Register each record's schema under its topics' subjects; encode with the id given."""
    for name in CODEC_NAMES:
        record = codec(name)
        subjects = [f"{getattr(topics, role)}-value" for role, kind in ROLE_RECORDS.items() if kind == name]
        try:
            ids = [registry.register(subject, record.schema) for subject in subjects]
        except RegistryError as exc:
            raise ConfigError(f"cannot register the {name} schema: {exc}") from None
        record.write_registry_id(ids[0])
