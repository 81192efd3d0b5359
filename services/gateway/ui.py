"""The live comparison page: the comparison service's own figures, pushed to browsers every second.

The gateway reads the comparison service's /metrics endpoint (the figures Prometheus and the
Grafana dashboards read), at most once a second and only while someone watches, and sends every
viewer the same snapshot as a server-sent event. So the page shows exactly what the comparison
service exports at that moment; it computes nothing of its own but ratios of two exported counters
(deadlines met / all) and sums over statuses.

    GET /ui            the page (HTML; its script and style are served here too: nothing external)
    GET /ui/events     text/event-stream, one `snapshot` event a second
    GET /ui/snapshot   the current snapshot as JSON

The page is public, like /metrics, and an event stream holds its connection for as long as the
viewer stays: so at most `max_viewers` streams are open at once (beyond, 503), and each ends after
STREAM_S (the browser reconnects by itself). Otherwise anyone could hold every --max-connections
slot with idle streams, and every REST call, inference included, would get 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import Any

import orjson
from prometheus_client.parser import text_string_to_metric_families
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from services.core.metrics import child
from services.core.runtime import now_ms
from services.gateway import metrics as m

log = logging.getLogger(__name__)

STATUSES = ("OK", "FALLBACK", "TIMEOUT", "ERROR")
QUANTILES = ("0.5", "0.9", "0.99")
WATCHED_S = 10.0  # keep reading this long after the last viewer asked
STREAM_S = 300.0  # an event stream ends after this; the browser reconnects (after RECONNECT_MS)
RECONNECT_MS = 1000
# Only this page's own script, style and event stream; nothing else may load.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def snapshot_from(text: str) -> dict[str, Any]:
    """The page's figures from a comparison service's Prometheus text exposition."""
    samples: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name].append((sample.labels, sample.value))
    models: dict[str, dict[str, Any]] = defaultdict(_empty_model)
    for labels, value in samples["rdv_cmp_latency_seconds"]:
        if labels["quantile"] in QUANTILES:
            models[labels["model"]]["latency_s"][labels["quantile"]] = value
    for labels, value in samples["rdv_cmp_agreement_ratio"]:
        models[labels["model"]]["agreement"] = value
    for labels, value in samples["rdv_cmp_score_ks"]:
        if labels["reference"] == "champion":
            models[labels["model"]]["ks"] = value
    for labels, value in samples["rdv_cmp_score_psi"]:
        if labels["reference"] == "champion":
            models[labels["model"]]["psi"] = value
    for labels, value in samples["rdv_cmp_window_outputs"]:
        models[labels["model"]]["window_outputs"] = value
    for labels, value in samples["rdv_cmp_deadline_total"]:
        models[labels["model"]]["deadline"][labels["outcome"]] = value
    for model in models.values():
        met, missed = model["deadline"]["met"], model["deadline"]["missed"]
        model["deadline"]["ratio"] = met / (met + missed) if met + missed else None
    champions = [labels["model"] for labels, _ in samples["rdv_cmp_champion_info"]]
    answers = {status: 0.0 for status in STATUSES}
    for labels, value in samples["rdv_cmp_answers_total"]:
        answers[labels["status"]] = value
    window = samples["rdv_cmp_window_records"]
    return {
        "champion": champions[0] if champions else None,
        "answers": answers,
        "answers_total": sum(answers.values()),
        "window_records": window[0][1] if window else 0.0,
        "models": [{"model": name, **models[name]} for name in sorted(models, key=_champion_first(champions))],
    }


def _empty_model() -> dict[str, Any]:
    return {"latency_s": {}, "agreement": None, "ks": None, "psi": None, "window_outputs": 0.0,
            "deadline": {"met": 0.0, "missed": 0.0, "ratio": None}}


def _champion_first(champions: list[str]) -> Callable[[str], tuple[bool, str]]:
    return lambda name: (name not in champions, name)


class ComparisonFeed:
    """The latest snapshot of the comparison service's figures, refreshed while watched."""

    def __init__(self, url: str, every_s: float = 1.0):
        self.url = url
        self.every_s = every_s
        self.latest: dict[str, Any] = self._status("waiting for the first reading")
        self.version = 0
        self._watched_until = 0.0
        self._changed = asyncio.Event()
        self._reading = asyncio.Lock()  # one reading at a time (`first_reading`)

    def _status(self, error: str | None) -> dict[str, Any]:
        return {"at": now_ms(), "source": self.url, "error": error, "champion": None, "models": [],
                "answers": {s: 0.0 for s in STATUSES}, "answers_total": 0.0, "window_records": 0.0}

    def watch(self) -> None:
        self._watched_until = time.monotonic() + WATCHED_S

    async def run(self, stopping: Callable[[], bool]) -> None:
        while not stopping():
            if self.url and time.monotonic() < self._watched_until:
                async with self._reading:
                    await self._refresh()
            await asyncio.sleep(self.every_s)

    async def first_reading(self) -> None:
        """A reading now if there has been none: one for every caller waiting for it (each one's
        own blocking read of up to 2 s, started per call, piled up in the thread pool)."""
        async with self._reading:
            if self.version == 0:
                await self._refresh()

    async def _refresh(self) -> None:
        self.latest = await asyncio.to_thread(self.read)
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()

    def read(self) -> dict[str, Any]:
        at = now_ms()
        try:
            with urllib.request.urlopen(self.url, timeout=2) as response:
                text = response.read().decode()
            return {"at": at, "source": self.url, "error": None, **snapshot_from(text)}
        except (urllib.error.URLError, OSError, ValueError) as exc:
            return {**self._status(f"cannot read {self.url}: {exc}"), "at": at}
        except Exception as exc:  # an exposition we cannot make sense of must not stop the page
            log.exception("cannot use the figures of %s", self.url)
            return {**self._status(f"cannot use the figures of {self.url}: {type(exc).__name__}: {exc}"), "at": at}

    async def changes(self, stopping: Callable[[], bool]) -> AsyncIterator[dict[str, Any]]:
        """Every new snapshot, as it is read (the current one first)."""
        self.watch()
        yield self.latest
        while not stopping():
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), timeout=self.every_s * 2)
            self.watch()
            yield self.latest


def _asset(name: str) -> bytes:
    return resources.files("services.gateway").joinpath("static", name).read_bytes()


class ComparisonPage:
    def __init__(
        self, feed: ComparisonFeed, stopping: Callable[[], bool], max_viewers: int, stream_s: float = STREAM_S,
    ):
        self.feed = feed
        self.stopping = stopping
        self.max_viewers = max_viewers
        self.stream_s = stream_s
        self.viewers = 0  # event streams open now (see _ViewerStream)
        self._assets = {name: _asset(name) for name in ("ui.html", "ui.js", "ui.css")}

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/ui", self._static("ui.html", "text/html; charset=utf-8")),
            Route("/ui/app.js", self._static("ui.js", "text/javascript; charset=utf-8")),
            Route("/ui/app.css", self._static("ui.css", "text/css; charset=utf-8")),
            Route("/ui/snapshot", self.snapshot),
            Route("/ui/events", self.events),
            Route("/favicon.ico", self.no_icon),  # browsers ask for one; there is none
        ]

    def _static(self, name: str, media_type: str) -> Callable[[Request], Any]:
        body = self._assets[name]

        async def serve(_request: Request) -> Response:
            return Response(body, media_type=media_type,
                            headers={"Content-Security-Policy": CSP, "Cache-Control": "no-cache"})

        return serve

    async def no_icon(self, _request: Request) -> Response:
        return Response(status_code=204)

    async def snapshot(self, _request: Request) -> Response:
        self.feed.watch()
        if self.feed.version == 0 and self.feed.url:
            await self.feed.first_reading()
        return Response(orjson.dumps(self.feed.latest), media_type="application/json")

    async def events(self, _request: Request) -> Response:
        if self.viewers >= self.max_viewers:
            child(m.REJECTED, "rest", "ui_viewers").inc()
            error = (f"the most viewers of /ui/events this gateway serves at once ({self.max_viewers}, "
                     "--ui-max-viewers) are watching: try again later")
            return Response(orjson.dumps({"error": error}), 503, {"Retry-After": "10"}, media_type="application/json")
        ends = time.monotonic() + self.stream_s

        async def stream() -> AsyncIterator[bytes]:
            yield f"retry: {RECONNECT_MS}\n\n".encode()
            async for snapshot in self.feed.changes(lambda: self.stopping() or time.monotonic() >= ends):
                yield b"event: snapshot\ndata: " + orjson.dumps(snapshot) + b"\n\n"

        self.viewers += 1  # counted from here: the next call sees it, before this stream is sent
        return _ViewerStream(self, stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


class _ViewerStream(StreamingResponse):
    """An event stream that counts as a viewer until it ends, however it ends (the viewer left,
    the stream's time was up, the gateway stopped): a generator's `finally` would run only when
    the generator is collected if the viewer left while it waited at a `yield`."""

    def __init__(self, page: ComparisonPage, content: AsyncIterator[bytes], **kwargs: Any):
        super().__init__(content, **kwargs)
        self._page = page

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._page.viewers -= 1
