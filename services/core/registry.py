"""The part of the Confluent Schema Registry REST API the wire format needs.

Two calls: register a schema under a subject (its id comes back; registering the same schema
again returns the same id) and fetch a schema by id. Confluent's registry, Apicurio's
`/apis/ccompat/v7` API, Karapace and Redpanda all serve it. Standard library HTTP on purpose:
two small JSON calls, made at start-up and once per unseen schema id, need no client library.
"""

from __future__ import annotations

import base64
import http.client
import json
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from services.core.redaction import never_print
from services.core.urls import checked_http_url

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
# The status of a RegistryError for a schema the registry gives but nobody can read as an Avro
# schema (another type, not JSON, not a record): the id's fault, as 404 is, not the registry's.
UNUSABLE = 422
MAX_REPLY_BYTES = 4 * 1024 * 1024  # a schema is a few kB; a reply larger than this is no registry's
MAX_ERROR_BYTES = 64 * 1024  # of an error reply, read for its message: the rest is not read
# A registry's own "not found" (Confluent's error codes, which Apicurio's ccompat API, Karapace and
# Redpanda give too: 40401 subject, 40402 version, 40403 schema).
NOT_FOUND_CODES = range(40400, 40500)


class RegistryError(Exception):
    """The registry did not answer (`status` None), or answered with an HTTP error `status`;
    `permanent`: the registry itself said the thing asked for is not there (or unusable), so asking
    again cannot help. A redirect, a proxy's 404 page, a 407 are not: the registry may be fine."""

    def __init__(self, message: str, status: int | None = None, permanent: bool = False):
        super().__init__(message)
        self.status = status
        self.permanent = permanent or status == UNUSABLE


class SchemaRegistry:
    """A Confluent-compatible schema registry at `url` (e.g. http://localhost:8081)."""

    def __init__(self, url: str, timeout_s: float = 5.0):
        checked_http_url(url, "--schema-registry")
        self.url, self._auth = _without_credentials(url.rstrip("/"))
        self.timeout_s = timeout_s

    def register(self, subject: str, schema: dict[str, Any]) -> int:
        """The id of `schema` under `subject`, registering it if it is new there."""
        body = json.dumps({"schema": json.dumps(schema, separators=(",", ":"))}).encode()
        reply = self._call("POST", f"/subjects/{quote(subject, safe='')}/versions", body)
        schema_id = reply.get("id") if isinstance(reply, dict) else None
        if not isinstance(schema_id, int):
            raise RegistryError(f"schema registry {self.url} answered registration of {subject} without an id")
        return schema_id

    def schema(self, schema_id: int) -> dict[str, Any]:
        """The Avro schema the registry holds under global id `schema_id`."""
        reply = self._call("GET", f"/schemas/ids/{schema_id}", None)
        if not isinstance(reply, dict):  # e.g. [] or null from something that is not a registry
            raise RegistryError(f"schema registry {self.url} answered schema id {schema_id} with no JSON object")
        text = reply.get("schema")
        if reply.get("schemaType", "AVRO") != "AVRO" or not isinstance(text, str):
            raise RegistryError(f"schema id {schema_id} in {self.url} is not an Avro schema", UNUSABLE)
        try:
            schema = json.loads(text)
        except (ValueError, RecursionError):  # nested deeper than the parser's stack
            raise RegistryError(f"schema id {schema_id} in {self.url} is not valid JSON", UNUSABLE) from None
        if not isinstance(schema, dict):
            raise RegistryError(f"schema id {schema_id} in {self.url} is not an Avro record schema", UNUSABLE)
        return schema

    @property
    def has_credentials(self) -> bool:
        """Whether the URL gave a user:password (sent as Basic authorization)."""
        return bool(self._auth)

    def subjects(self) -> Any:
        """The subjects it holds: the cheapest call every registry answers (a start-up check)."""
        return self._call("GET", "/subjects", None)

    def _call(self, method: str, path: str, body: bytes | None) -> Any:
        headers = {"Content-Type": CONTENT_TYPE, "Accept": CONTENT_TYPE}
        if self._auth:
            headers["Authorization"] = self._auth
        request = urllib.request.Request(self.url + path, data=body, method=method, headers=headers)
        # The timeout bounds each wait on the socket; the deadline, the whole call (a registry or a
        # proxy trickling its reply a byte at a time would keep every wait short).
        deadline = time.monotonic() + self.timeout_s
        try:
            with _NO_REDIRECTS.open(request, timeout=self.timeout_s) as response:
                # The parsed type only: the header as sent may hold line breaks or run to 64 KiB.
                sent = response.headers.get("Content-Type")
                kind = response.headers.get_content_type() if sent else "no content type"
                raw, status = _read_within(response, deadline), response.status
        except urllib.error.HTTPError as exc:
            text, code = _error_detail(exc, deadline)
            message = f"schema registry {self.url}{path}: HTTP {exc.code} {text}"
            raise RegistryError(message, exc.code, permanent=exc.code == 404 and code in NOT_FOUND_CODES) from None
        # It answered, and stopped (in a chunk, or short of its Content-Length), or answered too
        # much: said as its answer with the path, not "unreachable"; asked again later (no status).
        except http.client.IncompleteRead as exc:
            missing = f" ({exc.expected:,} bytes missing)" if exc.expected else ""
            raise RegistryError(f"schema registry {self.url}{path}: the answer was cut short{missing}") from None
        except _TooLarge as exc:
            raise RegistryError(f"schema registry {self.url}{path}: the answer {exc}") from None
        # HTTPException: from something that does not speak HTTP.
        except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            raise RegistryError(f"schema registry {self.url} unreachable: {reason}") from None
        try:
            return json.loads(raw)
        # RecursionError: JSON nested deeper than the parser's stack. Said apart from "unreachable":
        # a proxy's or a web server's HTML page at that address answers, but is no registry.
        except (ValueError, RecursionError):
            shown = f"an empty answer (HTTP {status})" if not raw else f"the answer ({kind})"
            raise RegistryError(f"schema registry {self.url}{path}: {shown} is not JSON; is the URL the "
                                "registry's?") from None


class _TooLarge(ValueError):
    """A reply over MAX_REPLY_BYTES."""


def _read_within(response: Any, deadline: float) -> bytes:
    """The reply's body, read by the deadline and at most MAX_REPLY_BYTES of it; `IncompleteRead`
    (as http.client raises for a chunked reply cut short) when bytes its Content-Length promised
    never came."""
    body = _read_some(response, deadline, MAX_REPLY_BYTES + 1)
    if len(body) > MAX_REPLY_BYTES:
        raise _TooLarge(f"is larger than {MAX_REPLY_BYTES // (1024 * 1024)} MiB")
    if response.length:
        raise http.client.IncompleteRead(body, response.length)
    return body


class _Unredirected(urllib.request.HTTPRedirectHandler):
    """No redirect is followed: urllib copies the Authorization header onto any, another host's
    too. A registry answers its two calls itself; a redirect is an HTTP error like any other."""

    def redirect_request(self, *_args: Any, **_kwargs: Any) -> None:
        return None


_NO_REDIRECTS = urllib.request.build_opener(_Unredirected)


def _without_credentials(url: str) -> tuple[str, str]:
    """The URL without its user:password@ (urllib took them for part of the host name, and every
    message quoted them), and the Basic authorization header they make ('' without them). The
    password is masked in every output line from here on."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, ""
    user, password = unquote(parts.username or ""), unquote(parts.password or "")
    never_print(password)
    never_print(quote(password, safe=""))
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    never_print(token)  # a registry or proxy may echo the Authorization header in its error text
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1])), f"Basic {token}"


def _error_detail(exc: urllib.error.HTTPError, deadline: float) -> tuple[str, int | None]:
    """An error reply's message (one line, cut) and its registry error code, if it is a registry's
    JSON error. Read within the call's deadline and MAX_ERROR_BYTES: read whole, an error page
    without end grew a process to 18 GB, one trickled in held the poll loop, and one nested deep
    (RecursionError) or cut short (IncompleteRead) escaped as no RegistryError and ended the
    service, again at each restart (a review)."""
    try:
        body = _read_some(exc, deadline, MAX_ERROR_BYTES)
        detail = json.loads(body)
    except (OSError, ValueError, RecursionError, http.client.HTTPException):
        return exc.reason or "", None
    if not isinstance(detail, dict):
        return "", None
    code = detail.get("error_code")
    text = " ".join(str(detail.get("message", "")).split())[:300]
    return text, code if isinstance(code, int) and not isinstance(code, bool) else None


def _read_some(response: Any, deadline: float, limit: int) -> bytes:
    """Up to `limit` bytes of a reply, by the deadline (TimeoutError past it)."""
    chunks: list[bytes] = []
    size = 0
    while size < limit and (chunk := response.read1(min(65_536, limit - size))):
        if time.monotonic() > deadline:
            raise TimeoutError("the reply took longer than the timeout to come")
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


class Outage:
    """Remembers a failed registry call for `quiet_s`, so a registry that is down costs one
    timeout, not one per record (every record with an unseen id fails fast meanwhile)."""

    def __init__(self, quiet_s: float = 5.0):
        self.quiet_s = quiet_s
        self._until = 0.0
        self._reason = ""

    def reason(self) -> str | None:
        """Why the registry is not being asked right now; None when it may be."""
        return self._reason if time.monotonic() < self._until else None

    def record(self, error: RegistryError) -> None:
        self._until = time.monotonic() + self.quiet_s
        self._reason = f"{error} (not retried for {self.quiet_s:g} s)"
