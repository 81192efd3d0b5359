"""The REST port's guard against callers that hold it without asking anything.

uvicorn's httptools protocol bounds neither the size of a request's head (its request line and
headers: a caller sent 192 MiB of headers before the API key was ever looked at, and the
gateway's memory grew with them) nor the time a head may take to arrive (connections that send
half a head and wait keep their slot for good: a few hundred fill `--max-connections`, and every
other caller, the liveness probe included, is refused). This protocol adds both, as a proxy in
front would (nginx: 8 KiB a header line, 60 s):

    a head over `max_head_bytes`            431, connection closed
    a head not complete in `head_timeout_s`  408, connection closed (from the connection's
                                             first byte, or from its opening if none comes)
    a body not complete in `body_timeout_s`  408 (or, once an answer has begun, the connection
                                             closed), from the end of its head

    more than `max_pipelined` requests     the connection closed (`pipelined`)
    queued behind the one being answered
    a request with a body asking for a       400, connection closed (`upgrade`); one without a
    protocol upgrade (Upgrade: h2c, ...)     body is answered as HTTP/1.1, then its connection closed

uvicorn queues a connection's pipelined requests without a bound, and reads on after each answer:
one connection writing `GET /v2/health/live` over and over without waiting grew the gateway to
2.4 GB while 141 answers went out (a review). A client that pipelines keeps a few requests ahead;
more is a flood. An upgrade uvicorn cannot serve (no WebSocket library is installed; h2c is not
HTTP/1.1) handed the app an empty body, and the parser then read the body's bytes as a request of
their own: a request smuggled past any proxy that forwards the header (a review). The server
runs with `ws="none"`: a WebSocket library installed beside uvicorn would otherwise take upgrades
this guard has already answered.

and counts what uvicorn refuses by itself, before the app sees a request, in the same metric: a
request the HTTP parser cannot read (uvicorn's 400, `bad_request`) and one over
`limit_concurrency` (its 503, `max_connections`). Each refusal logged a WARNING line, so any
caller could fill the log at will: those lines now come at most once a minute, with the count.
A call whose body the guard cut off (too slow, or unreadable framing) is marked in its ASGI scope
(`CLOSED_BY`), so the app counts it for that reason, not as a caller who hung up.

The time between requests of a kept-alive connection stays uvicorn's `timeout_keep_alive`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from prometheus_client import Counter
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from services.core.rate_limit import OncePerPeriod

MAX_HEAD_BYTES = 64 * 1024
HEAD_TIMEOUT_S = 10.0
BODY_TIMEOUT_S = 30.0  # the whole body: 33 KB/s for a 1 MiB one
MAX_PIPELINED = 8  # requests of one connection waiting behind the one being answered
CLOSED_BY = "rdv.closed_by"  # scope key: why the guard closed the connection under a call's app
QUIET_S = 60.0

REFUSED = Counter("rdv_gateway_connections_refused_total",
                  "REST requests refused before they were read, by reason (head_too_large | head_too_slow | "
                  "body_too_slow | bad_request: the HTTP parser could not read it | max_connections: "
                  "--max-connections were open | pipelined: too many requests queued on one connection | "
                  "upgrade: a request with a body asking for a protocol upgrade, which is not served).",
                  ["reason"])
# Each series from 0: the first refusals are an increase to rate() (RdvGatewayFailing reads them).
for _reason in ("head_too_large", "head_too_slow", "body_too_slow", "bad_request", "max_connections", "pipelined",
                "upgrade"):
    REFUSED.labels(_reason)


class _OncePerMinute(logging.Filter):
    """uvicorn's WARNING for each request it refuses, let through at most once per QUIET_S with
    the number of them since (every one is counted in REFUSED)."""

    LINES = {"Invalid HTTP request received.": "bad_request", "Exceeded concurrency limit.": "max_connections"}

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.limit: OncePerPeriod[str] = OncePerPeriod(QUIET_S, clock)

    def filter(self, record: logging.LogRecord) -> bool:
        reason = self.LINES.get(record.msg) if isinstance(record.msg, str) else None
        if reason is None:
            return True
        held = self.limit.passes(reason)
        if held is None:
            return False
        record.msg = f"{record.msg} (refused requests are counted in rdv_gateway_connections_refused_total" \
                     f"{{reason=\"{reason}\"}}; {held.lines} more since the last such line; the next in {QUIET_S:g} s)"
        return True


_QUIETER = _OncePerMinute()


def guarded_protocol(
    max_head_bytes: int = MAX_HEAD_BYTES,
    head_timeout_s: float = HEAD_TIMEOUT_S,
    body_timeout_s: float = BODY_TIMEOUT_S,
    max_pipelined: int = MAX_PIPELINED,
) -> type:
    """uvicorn's httptools protocol with these bounds (the `http` of its Config)."""

    logger = logging.getLogger("uvicorn.error")
    if _QUIETER not in logger.filters:
        logger.addFilter(_QUIETER)

    class Guarded(_Guarded):
        MAX_PIPELINED = max_pipelined
        MAX_HEAD_BYTES = max_head_bytes
        HEAD_TIMEOUT_S = head_timeout_s
        BODY_TIMEOUT_S = body_timeout_s

    return Guarded


class HeadTooLarge(Exception):
    """Raised from the parser's callbacks: the parser stops, the connection gets a 431."""


class _Guarded(HttpToolsProtocol):
    MAX_PIPELINED = MAX_PIPELINED
    MAX_HEAD_BYTES = MAX_HEAD_BYTES
    HEAD_TIMEOUT_S = HEAD_TIMEOUT_S
    BODY_TIMEOUT_S = BODY_TIMEOUT_S

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_bytes = 0  # as received, while in a head (a line not ended yet included)
        self._parsed_bytes = 0  # of the current head, as the parser hands it over
        self._in_head = True  # between requests, and until a request's head is complete
        self._too_large = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        self._disarm_body_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # Counted as they come: the parser hands a header over only once its line ends, so one
        # line that never ends would otherwise grow without a bound.
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._head_bytes > self.MAX_HEAD_BYTES and not self.transport.is_closing():
            self._too_large = True  # all of it still head: what came is over the bound
            self.send_400_response("")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._parsed_bytes = 0
        self._arm_head_timer()

    # A whole head may come in one read: counted as the parser hands it over, too.
    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm_head_timer()
        if self.transport.is_closing():
            return  # refused, the rest of what was read with it is dropped: no app starts for it
        upgrade = self.parser.should_upgrade()
        if upgrade and self._has_body():
            # Before the app starts: it would get an empty body, the body's bytes read as a request.
            REFUSED.labels("upgrade").inc()
            if self.cycle is not None and not self.cycle.response_complete:
                self.transport.close()  # an answer is under way: a 400 written now would pass for it
            else:
                self._close_with(b"400 Bad Request", "a request with a body and a protocol upgrade (Upgrade with "
                                                     "Connection: upgrade) is not served: send it without the upgrade "
                                                     "(Java's HttpClient: .version(HTTP_1_1); curl: --http1.1)")
            return  # the parser stops at the upgrade (uvicorn's warning about it is dropped below)
        if len(self.pipeline) >= self.MAX_PIPELINED:
            # A response may be under way on this connection: no status can be written into it.
            REFUSED.labels("pipelined").inc()
            self.transport.close()
            return
        self._body_timer = self.loop.call_later(self.BODY_TIMEOUT_S, self._body_too_slow)
        limit = self.limit_concurrency
        if limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit):
            REFUSED.labels("max_connections").inc()  # uvicorn's own test, just below: it answers 503
        super().on_headers_complete()
        if upgrade:
            # Without a body (Java's HttpClient and `curl --http2` ask for h2c on plain-HTTP requests):
            # answered as HTTP/1.1, the upgrade ignored as RFC 9110 allows; then the connection is
            # closed, since the parser reads nothing past an upgrade in what came with it. With a
            # body they are refused above: llhttp ends such a message at its head and never hands
            # the body over (serving it would mean reading the body past the parser).
            self.cycle.keep_alive = False

    def _has_body(self) -> bool:
        """Whether the request whose head is complete says a body follows."""
        for name, value in self.headers:
            if name == b"transfer-encoding" or (name == b"content-length" and value.strip() not in (b"", b"0")):
                return True
        return False

    def on_body(self, body: bytes) -> None:
        if not self.transport.is_closing():  # else a request refused above: it has no cycle of its own
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm_body_timer()
        if self.transport.is_closing():
            return
        super().on_message_complete()
        self._in_head, self._head_bytes = True, 0  # what comes next is the next request's head

    def _unsupported_upgrade_warning(self) -> None:
        """uvicorn's two WARNING lines for an upgrade it cannot serve, which any caller could
        repeat at will: the guard refused and counted it already (on_headers_complete)."""

    def send_400_response(self, msg: str) -> None:
        if not self._too_large:
            REFUSED.labels("bad_request").inc()  # the parser could not read the request (head or body)
            self._mark_call("bad_request")
            super().send_400_response(msg)
            return
        REFUSED.labels("head_too_large").inc()
        self._close_with(b"431 Request Header Fields Too Large",
                         f"the request line and headers are over {self.MAX_HEAD_BYTES:,} bytes")

    def _count(self, size: int) -> None:
        if not self._in_head:
            return  # a chunked body's trailers
        self._parsed_bytes += size
        if self._parsed_bytes > self.MAX_HEAD_BYTES:
            self._too_large = True
            raise HeadTooLarge  # the parser stops and reports it: send_400_response above

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.HEAD_TIMEOUT_S, self._head_too_slow)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _disarm_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_too_slow(self) -> None:
        self._body_timer = None
        if self.transport.is_closing():
            return
        REFUSED.labels("body_too_slow").inc()
        self._mark_call("body_too_slow")
        if self.cycle is not None and self.cycle.response_started:
            self.transport.close()  # an answer is under way (e.g. a 401 before the body): no status fits
            return
        self._close_with(b"408 Request Timeout", f"the request body did not arrive within {self.BODY_TIMEOUT_S:g} s")

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        REFUSED.labels("head_too_slow").inc()
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined head too slow behind a request still being answered: no status can be
            # written into that response's stream, only the connection closed.
            self.transport.close()
            return
        self._close_with(b"408 Request Timeout", f"no complete request head within {self.HEAD_TIMEOUT_S:g} s")

    def _mark_call(self, reason: str) -> None:
        """Tell the app reading this call's body why it ends (it sees only a disconnect)."""
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.scope[CLOSED_BY] = reason  # type: ignore[literal-required]

    def _close_with(self, status: bytes, text: str) -> None:
        body = (text + "\n").encode()
        self.transport.write(b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain; charset=utf-8\r\n"
                             b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body)
        self.transport.close()
