"""What goes to a caller without a key (error bodies, health reasons) is masked like a log line:
a Kafka error's text may quote a setting's value."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from services.core.errors import BrokerError
from services.core.health import serve_http
from services.core.redaction import forget_all, never_print
from services.gateway.errors import status_of
from services.localkafka.config import free_port

SECRET = "s3cr3t-sasl-pw"


@pytest.fixture(autouse=True)
def remembered() -> Iterator[None]:
    never_print(SECRET)
    yield
    forget_all()


def test_an_error_body_never_shows_a_remembered_value() -> None:
    status = status_of(BrokerError(f"authentication failed for password {SECRET}"))
    assert status.http == 503 and SECRET not in status.message and "authentication failed" in status.message


def test_health_reasons_never_show_a_remembered_value() -> None:
    port = free_port()
    server = serve_http(port, lambda: (False, f"broker said {SECRET}"), "127.0.0.1",
                        lambda: (False, f"stuck near {SECRET}"))
    assert server is not None
    try:
        for path in ("/readyz", "/healthz"):
            with pytest.raises(urllib.error.HTTPError) as answer:
                urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5)
            body = answer.value.read().decode()
            assert answer.value.code == 503 and SECRET not in body and "***" in body, body
    finally:
        server.shutdown()
        server.server_close()
