"""HTTP URLs given as flags: checked at start, each failure one line, and shown without secrets.

They are shown wherever they go (start-up lines, errors, the gateway's public /ui page), so no
check quotes the parser's words (they quote the URL's pieces, a password's included) and none
takes a query or fragment, where a token may ride.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from urllib.parse import urlsplit

from services.core.errors import ConfigError

MAX_PORT = 65_535
# A host name or an IPv4 address, or an IPv6 one (urlsplit's hostname drops its brackets).
# (Letters of any script: Python turns an international name into its DNS form; an IPv6 address
# may end in a zone, %eth0 or %br-lan.)
HOST = re.compile(r"[\w.-]+|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*(?:%[\w.-]+)?")


def shown_url_safely(url: str) -> str:
    """A URL that may not even parse, as it may be shown: everything before an '@' left out, and
    a query or fragment (a token may ride there)."""
    return re.sub(r"[?#].*$", "?***", re.sub(r"^([a-z]+://)?.*@", r"\1***@", url))


def checked_http_url(url: str, flag: str, *, refuse_credentials: str | None = None) -> None:
    """A ConfigError naming `flag` unless `url` is an http(s) URL with a host, a port from 1 to
    MAX_PORT if it names one, no query and no fragment. `refuse_credentials`: why user:password@
    is refused there (None: taken, the schema registry's own credentials)."""
    shown = shown_url_safely(url)
    if not url.lower().startswith(("http://", "https://")):  # HTTP:// too, as urllib reads it
        raise ConfigError(f"{flag} must be an http(s):// URL, got {shown!r}")
    unparsed = ConfigError(f"{flag} {shown!r} is not a valid URL (a user name or password holding '/', '?', '#' "
                           "or '@' must be percent-encoded)")
    try:
        parts = urlsplit(url)
    except ValueError:
        raise unparsed from None
    if refuse_credentials is not None and "@" in parts.netloc:
        raise ConfigError(f"{flag} must not carry user:password@ ({refuse_credentials})")
    try:
        port_ok = parts.port is None or 0 < parts.port <= MAX_PORT
    except ValueError:
        # No number where the port goes: a password's '/' ended the host early (user:pa/ss@host).
        # A number past 65535 is a port all the same, and said as one (it was said as the above: a probe).
        if not parts.netloc.rpartition(":")[2].isdigit():
            raise unparsed from None
        port_ok = False
    if not parts.hostname or not port_ok:
        raise ConfigError(f"{flag} {shown!r} needs a host and a port from 1 to {MAX_PORT}")
    if not HOST.fullmatch(parts.hostname):  # 'exa mple.com' was taken, and failed at the first request
        raise ConfigError(f"{flag} {shown!r}: its host is no host name or address (letters, digits, '.', '-')")
    if parts.query or parts.fragment or "?" in url or "#" in url:
        where = "credentials go in user:password@" if refuse_credentials is None else "the URL is shown"
        raise ConfigError(f"{flag} {shown!r} takes no query or fragment ({where})")


def check_listen_address(address: str, flag: str) -> None:
    """A ConfigError naming `flag` unless `address` is an IP address or a host name to bind: 'not an
    addr', 999.1.1.1 or http://0.0.0.0 failed only once Kafka had been reached (a probe); an empty
    one is the setting's `if_empty`."""
    try:
        if ":" in address:
            ipaddress.ip_address(address)
        elif all(c.isdigit() or c == "." for c in address):
            socket.inet_aton(address)  # as bind() reads it: 127.1 and 0 are addresses too
        elif not HOST.fullmatch(address):
            raise ValueError(address)
    except (ValueError, OSError):
        raise ConfigError(f"{flag} {address[:80]!r} is no address to listen on: an IP address (0.0.0.0, ::) or a "
                          "host name, without scheme or port") from None
