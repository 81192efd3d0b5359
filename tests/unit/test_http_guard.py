"""The REST port's guard (services/gateway/http_guard.py) on a real uvicorn server and real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from services.gateway.http_guard import _QUIETER, QUIET_S, REFUSED, _OncePerMinute, guarded_protocol
from services.localkafka.config import free_port


async def hello(scope: dict, receive: Any, send: Any) -> None:  # type: ignore[type-arg]
    """Reads the whole body, as the gateway's handlers do, then answers."""
    message = await receive()
    while message.get("more_body"):
        message = await receive()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]})
    await send({"type": "http.response.body", "body": b"hello"})


@contextlib.contextmanager
def guarded_server(head_timeout_s: float = 1.0, max_pipelined: int = 8) -> Iterator[int]:
    """A guarded server (2 s body timeout, 3 connections) in a thread, on the port given."""
    chosen = free_port()
    protocol = guarded_protocol(4096, head_timeout_s, 2.0, max_pipelined)
    config = uvicorn.Config(hello, host="127.0.0.1", port=chosen, http=protocol, ws="none",
                            lifespan="off", log_config=None, access_log=False, limit_concurrency=3)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    while not server.started:
        thread.join(0.05)
    try:
        yield chosen
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def port(request: pytest.FixtureRequest) -> Iterator[int]:
    """A guarded server's port: a 1 s head timeout, unless the test gives another (indirect)."""
    with guarded_server(getattr(request, "param", 1.0)) as chosen:
        yield chosen


def exchange(port: int, data: bytes) -> bytes:
    """What the server answers before it closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        if data:
            conn.sendall(data)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
        return answer


def test_a_request_within_the_bounds_is_served(port: int) -> None:
    assert exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").endswith(b"hello")


def test_a_head_over_the_limit_is_refused_before_the_app_sees_it(port: int) -> None:
    big = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 500) for i in range(20))
    assert exchange(port, big + b"\r\n").startswith(b"HTTP/1.1 431 ")


def test_one_header_line_that_never_ends_is_refused_too(port: int) -> None:
    """The parser hands a header over only when its line ends: counted that way, one endless line
    grew the gateway's memory by 87 MiB in 10 s."""
    refused = REFUSED.labels("head_too_large")
    before = refused._value.get()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(b"GET / HTTP/1.1\r\nX-Endless: ")
        answer = b""
        try:
            for _ in range(64):  # 1 MiB at most: refused long before
                conn.sendall(b"a" * 16384)
            while chunk := conn.recv(65536):  # the server closes it (a timeout here fails the test)
                answer += chunk
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed while we still sent: the kernel may drop its 431 with the reset
    assert refused._value.get() == before + 1
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431 "), answer[:80]


def test_a_head_that_never_completes_is_closed_and_its_slot_freed(port: int) -> None:
    assert exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\n").startswith(b"HTTP/1.1 408 ")  # half a head
    assert exchange(port, b"").startswith(b"HTTP/1.1 408 ")  # nothing at all
    # Three such connections held every slot of this server (limit_concurrency=3) for good.
    held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(3)]
    try:
        for conn in held:
            conn.sendall(b"GET / HTTP/1.1\r\n")
        for conn in held:
            assert conn.recv(65536).startswith(b"HTTP/1.1 408 ")
        assert exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").endswith(b"hello")
    finally:
        for conn in held:
            conn.close()


def test_a_body_that_never_completes_is_closed_and_its_slot_freed(port: int) -> None:
    answer = exchange(port, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:80]
    body = b"x" * 100  # the same request whole is answered
    assert exchange(port, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\nConnection: close\r\n\r\n"
                    + body).endswith(b"hello")


# The three connections held for the 503 send nothing: with the 1 s head timeout they were closed
# (408) when the fourth came more than a second later, and it was served (forced with a 1.1 s sleep).
@pytest.mark.parametrize("port", [60.0], indirect=True)
def test_requests_uvicorn_refuses_itself_are_counted_and_logged_once_a_minute(
    port: int, caplog: pytest.LogCaptureFixture
) -> None:
    """A request the parser cannot read (uvicorn's 400) and one over limit_concurrency (its 503)
    were counted nowhere, and each wrote a WARNING line: any caller could fill the log."""
    _QUIETER.limit.drain()  # the first line of each reason passes
    unreadable, crowded = REFUSED.labels("bad_request"), REFUSED.labels("max_connections")
    before = unreadable._value.get(), crowded._value.get()
    caplog.set_level("WARNING", logger="uvicorn.error")
    for _ in range(3):
        assert exchange(port, b"NOT HTTP AT ALL\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(3)]  # limit_concurrency=3
    try:
        assert exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").startswith(b"HTTP/1.1 503 ")
    finally:
        for conn in held:
            conn.close()
    assert (unreadable._value.get(), crowded._value.get()) == (before[0] + 3, before[1] + 1)
    lines = [r.getMessage() for r in caplog.records if r.name == "uvicorn.error"]
    assert len([line for line in lines if line.startswith("Invalid HTTP request received.")]) == 1, lines
    assert any('rdv_gateway_connections_refused_total{reason="bad_request"}' in line for line in lines), lines


def test_the_refusal_lines_pass_once_a_minute_with_the_count_of_those_held_back() -> None:
    now = [100.0]
    quieter = _OncePerMinute(clock=lambda: now[0])

    def line(msg: str) -> logging.LogRecord:
        return logging.LogRecord("uvicorn.error", logging.WARNING, __file__, 1, msg, None, None)

    assert quieter.filter(line("Invalid HTTP request received."))
    assert not quieter.filter(line("Invalid HTTP request received."))
    assert quieter.filter(line("Exceeded concurrency limit.")), "each reason has its own minute"
    assert quieter.filter(line("Some other line.")), "other lines are not held back"
    now[0] += QUIET_S
    record = line("Invalid HTTP request received.")
    assert quieter.filter(record)
    assert "; 1 more since the last such line;" in record.getMessage(), record.getMessage()


def test_a_flood_of_pipelined_requests_closes_its_connection() -> None:
    """uvicorn queued every pipelined request it read and read on after each answer: one
    connection grew the gateway to 2.4 GB. Here a few wait; more close the connection."""
    with guarded_server(max_pipelined=2) as chosen:
        refused = REFUSED.labels("pipelined")
        before = refused._value.get()
        flood = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 500
        answer = exchange(chosen, flood)  # a timeout here (the connection kept open) fails the test
        assert refused._value.get() == before + 1
        # At most the one being answered and the two queued (none, when all came in one read: the
        # connection closes before the first answer is written).
        assert answer.count(b"HTTP/1.1 200 ") <= 3


def test_a_flood_and_an_upgrade_in_one_read_are_one_refusal() -> None:
    with guarded_server(max_pipelined=2) as chosen:
        pipelined, upgrade = REFUSED.labels("pipelined"), REFUSED.labels("upgrade")
        before = pipelined._value.get(), upgrade._value.get()
        flood = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 20
        upgraded = b"POST / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nContent-Length: 2\r\n\r\nhi"
        exchange(chosen, flood + upgraded)
        assert (pipelined._value.get(), upgrade._value.get()) == (before[0] + 1, before[1])


def test_a_few_pipelined_requests_are_all_answered() -> None:
    with guarded_server(max_pipelined=2) as chosen:
        three = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 2 + b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        assert exchange(chosen, three).count(b"HTTP/1.1 200 ") == 3


def test_an_upgrade_without_a_body_is_answered_as_http_1_1_and_its_connection_closed(port: int) -> None:
    """Java's HttpClient and `curl --http2` ask for h2c on every plain-HTTP request: refused, every
    such client lost the gateway (a review). Ignored instead, as RFC 9110 allows."""
    upgrade = REFUSED.labels("upgrade")
    before = upgrade._value.get()
    asks = (b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
            b"HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n")
    answer = exchange(port, asks)  # a timeout here (the connection kept open) fails the test
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"hello")
    assert b"connection: close" in answer.lower() and upgrade._value.get() == before


def test_a_protocol_upgrade_is_refused_before_its_body_can_pass_for_a_request(port: int) -> None:
    """uvicorn, with no WebSocket library, handed the app an empty body and then parsed the body's
    bytes as a request of their own: smuggled past a proxy that forwards the Upgrade header."""
    refused = REFUSED.labels("upgrade")
    before = refused._value.get()
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    head = (b"POST /v2/models/default/infer HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
            b"Content-Length: %d\r\n\r\n" % len(smuggled))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(head)
        first = conn.recv(65536)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # already closed: nothing of it is read
            conn.sendall(smuggled)  # in a later packet, as a proxy may forward it
        answer = first
        with contextlib.suppress(ConnectionResetError):
            while chunk := conn.recv(65536):
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 ") and b"upgrade" in answer
    assert answer.count(b"HTTP/1.1 ") == 1
    assert refused._value.get() == before + 1
