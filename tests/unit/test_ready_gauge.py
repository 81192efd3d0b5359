"""rdv_ready follows the service's readiness at every scrape, not only when /readyz is asked
(where nothing probes, as under Compose, it stayed 0 and an alert on it could never be right)."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from services.core.health import serve_http
from services.localkafka.config import free_port


def _ready_on_scrape(port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return next(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == "rdv_ready")


def test_each_scrape_says_whether_the_service_is_ready() -> None:
    ready = [False]
    port = free_port()
    server = serve_http(port, lambda: (ready[0], "why"), "127.0.0.1")
    assert server is not None
    try:
        assert _ready_on_scrape(port) == 0
        ready[0] = True
        assert _ready_on_scrape(port) == 1
        ready[0] = False
        assert _ready_on_scrape(port) == 0
    finally:
        server.shutdown()
        server.server_close()
