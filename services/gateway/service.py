"""`rendezvous gateway`: one process serving REST (uvicorn) and gRPC (grpc.aio) on one event loop.

Start: the Kafka client joins the gateways' group on the replies topic (its return addresses),
the schedule is read from the control topic, then both servers listen. Readiness (/readyz,
/v2/health/ready, ServerReady) holds once the group gave this gateway a reply partition and a
schedule is in force.

Stop (SIGTERM/SIGINT set a flag, services/core/runtime.py): readiness turns false and new calls
get 503 at once; the calls in flight get up to --drain-timeout-s to finish; whatever still waits
then fails with 503; the servers close, and the client leaves the group, so its reply partitions
move to the other gateways. Nothing on the Kafka side is lost: every request sent was answered
and logged by the rendezvous as usual; only the HTTP calls waiting here failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Iterator, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import grpc
import uvicorn
import uvloop

from services.client.client import Client
from services.control.follower import ScheduleFollower
from services.core.errors import BrokerError, ConfigError
from services.core.health import BrokerHealth, serve_http
from services.core.kafka import admin, delivery_timeout
from services.core.runtime import tune_gc
from services.gateway import metrics as m
from services.gateway.auth import ApiKeys
from services.gateway.catalog import Catalog
from services.gateway.comparisons import ComparisonTap
from services.gateway.engine import Gateway
from services.gateway.errors import Unavailable
from services.gateway.http_guard import guarded_protocol
from services.gateway.rest import RestApi, build_app
from services.gateway.settings import GatewaySettings
from services.gateway.signatures import FixedSignatures, signatures_for
from services.gateway.ui import ComparisonFeed, ComparisonPage

log = logging.getLogger(__name__)

HEALTH_EVERY_S = 2.0
KEYS_EVERY_S = 5.0  # how often --api-keys-file is read for changes


def server_version() -> str:
    try:
        return version("rendezvous-serving")
    except PackageNotFoundError:
        return "dev"


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: ours only set the stop flag (core/runtime.py)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _listen(addr: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((addr, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {addr}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def stop_if_ended(gateway: Gateway, http_task: asyncio.Task[None] | None) -> None:
    """Raise why the gateway cannot serve any more: its HTTP server ended by itself, or a reader
    of its Kafka topics stopped for good (e.g. no grant on its reply group). It answered every
    call 503 and stayed up, where every other service exits with the reason (a review); an
    orchestrator restarts it either way."""
    if http_task is not None and http_task.done():
        http_task.result()  # the HTTP server ended by itself: say why
        raise ConfigError("the HTTP server stopped")
    broken = gateway.broken()
    if broken is not None:
        raise BrokerError(f"the gateway can answer no call: {broken}")


class GatewayService:
    """Runs until `stop` is set (the CLI's `run_service` sets it on SIGTERM/SIGINT)."""

    def __init__(self, settings: GatewaySettings, fallback_features: Sequence[str] = ()):
        self.settings = settings
        self.fallback_features = tuple(fallback_features)
        self.ready = threading.Event()
        self.gateway: Gateway | None = None
        self._stopping = False
        self._feed = ComparisonFeed(settings.comparison_url)

    def readiness(self) -> tuple[bool, str]:
        return self.gateway.readiness() if self.gateway else (False, "starting")

    def liveness(self) -> tuple[bool, str]:
        """/healthz of the extra metrics port, as the REST port's (rest.py)."""
        broken = self.gateway.broken() if self.gateway else None
        return (False, broken) if broken else (True, "ok")

    def run(self, stop: threading.Event) -> None:
        uvloop.run(self._main(stop))

    async def _main(self, stop: threading.Event) -> None:
        s = self.settings
        keys = ApiKeys.load(s.api_keys_file, s.api_key_hashes)
        if not keys.enabled:
            log.warning("no API keys configured: every caller is let in (see --api-keys-file)")
        m.API_KEYS.set(len(keys))
        health = BrokerHealth()
        config: dict[str, Any] = {**s.librdkafka(), "client.id": f"rdv-gateway-{s.instance_name()}",
                                  "error_cb": health.error_cb}
        topics = s.topics()
        with contextlib.ExitStack() as closing:
            # A request older than any call may wait is useless: librdkafka gives it up then, not after
            # its 5-minute default (such requests filled its queue while the broker took none).
            client_config = {**config, **delivery_timeout(config, s.max_budget_ms + s.answer_grace_ms)}
            # Every call gives up on its requests' waiters itself, after waits of its own (the
            # answer or comparison grace): the client's expiry is not for them.
            client = await asyncio.to_thread(Client, client_config, topics, reply_group=s.reply_group_id(),
                                             wait_when_full=False, expire_waiters=False)
            closing.callback(client.close)
            schedules = await asyncio.to_thread(ScheduleFollower, config, topics.control, s.schedule)
            closing.callback(schedules.close)
            signatures = await asyncio.to_thread(signatures_for, config, s.models_topic_name(),
                                                 self.fallback_features)
            closing.callback(getattr(signatures, "close", lambda: None))
            catalog = Catalog(schedules, signatures, enforce=not isinstance(signatures, FixedSignatures))
            tap = ComparisonTap(config, topics.log)
            closing.callback(tap.close)
            gateway = self.gateway = Gateway(s, client, catalog, tap, keys, health)
            metrics_server = serve_http(s.metrics_port, self.readiness, s.http_addr, self.liveness)
            if metrics_server is not None:
                closing.callback(metrics_server.shutdown)
            tune_gc()  # as the streaming services do once started (services/core/runtime.py)
            await self._serve(gateway, config, stop)

    async def _serve(self, gateway: Gateway, config: dict[str, Any], stop: threading.Event) -> None:
        s = self.settings
        http = self._http_server(gateway) if s.http_port > 0 else None
        http_task = asyncio.create_task(http[0].serve(sockets=[http[1]])) if http else None
        grpc_server = await self._grpc_server(gateway) if s.grpc_port > 0 else None
        watch = asyncio.create_task(self._watch_broker(gateway, config))
        keys_task = asyncio.create_task(self._watch_keys(gateway.keys)) if s.api_keys_file else None
        feed_task = asyncio.create_task(self._feed.run(lambda: self._stopping)) if http else None
        self.ready.set()
        rest = f"{s.http_addr}:{s.http_port}" if http else "off"
        grpc = f"{s.grpc_addr}:{s.grpc_port}" if grpc_server else "off"
        log.info("gateway %s: REST %s, gRPC %s, %s", s.instance_name(), rest, grpc,
                 "over TLS" if s.tls_cert else "without TLS (plain HTTP and gRPC)")
        try:
            while not stop.is_set():
                stop_if_ended(gateway, http_task)
                await asyncio.sleep(0.1)
            await self._drain(gateway)
        finally:
            self._stopping = True
            if grpc_server is not None:
                await grpc_server.stop(grace=1.0)
            if http is not None and http_task is not None:
                http[0].should_exit = True
                await http_task
            for task in (watch, feed_task, keys_task):
                if task is not None:
                    task.cancel()

    def _http_server(self, gateway: Gateway) -> tuple[_Server, socket.socket]:
        s = self.settings
        extra = ComparisonPage(self._feed, lambda: self._stopping, s.ui_max_viewers).routes() if s.ui else []
        app = build_app(RestApi(gateway, server_version()), extra)
        config = uvicorn.Config(
            app, http=guarded_protocol(), ws="none", lifespan="off", access_log=False, log_config=None,
            server_header=False, ssl_certfile=s.tls_cert or None, ssl_keyfile=s.tls_key or None, backlog=2048,
            timeout_graceful_shutdown=5, timeout_keep_alive=30, limit_concurrency=s.max_connections,
        )
        return _Server(config), _listen(s.http_addr, s.http_port)

    async def _grpc_server(self, gateway: Gateway) -> grpc.aio.Server:
        from services.gateway.grpc_api import InferenceService, add_to
        from services.gateway.grpc_guard import CountingInterceptor

        s = self.settings
        server = grpc.aio.server(interceptors=[CountingInterceptor(gateway.keys)],
                                 options=[("grpc.max_receive_message_length", s.max_body_bytes),
                                          ("grpc.so_reuseport", 0)], maximum_concurrent_rpcs=s.max_connections)
        add_to(server, InferenceService(gateway, server_version()), s.max_features, s.max_rows)
        address = f"[{s.grpc_addr}]:{s.grpc_port}" if ":" in s.grpc_addr else f"{s.grpc_addr}:{s.grpc_port}"
        try:
            if s.tls_cert:
                with open(s.tls_key, "rb") as key, open(s.tls_cert, "rb") as cert:
                    credentials = grpc.ssl_server_credentials([(key.read(), cert.read())])
                bound = server.add_secure_port(address, credentials)
            else:
                bound = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise ConfigError(f"cannot listen for gRPC on {address}: {exc}") from None
        if not bound:
            raise ConfigError(f"cannot listen for gRPC on {address}")
        await server.start()
        return server

    async def _drain(self, gateway: Gateway) -> None:
        """Stop taking calls, give those in flight their time, fail the rest with 503."""
        gateway.draining = True
        log.info("gateway stopping: %d rows in flight (at most %.0fs)", gateway.rows_in_flight,
                 self.settings.drain_timeout_s)
        waited = 0.0
        while gateway.rows_in_flight and waited < self.settings.drain_timeout_s:
            await asyncio.sleep(0.05)
            waited += 0.05
        if gateway.rows_in_flight:
            log.warning("draining: %d rows still waiting after %.0fs; failing them with 503",
                        gateway.rows_in_flight, self.settings.drain_timeout_s)
            # A retry gets the same answer only as a call to the schedule under the same `id`: without
            # one, or to one model, it is a new request (engine.py `_request_ids`).
            gateway.client.fail_all(Unavailable("this gateway is shutting down; the request was sent and will be "
                                                "answered on the Kafka side: a retry under the same id, to the "
                                                "schedule, gets that answer; any other retry is scored anew"))
            gateway.tap.fail_all(Unavailable("this gateway is shutting down"))
            await asyncio.sleep(0.2)  # let the handlers write their 503s before the servers close

    async def _watch_keys(self, keys: ApiKeys) -> None:
        """--api-keys-file read again every KEYS_EVERY_S: a key added there is let in, and one
        revoked refused, from then on, without a restart (a Kubernetes Secret mounted as a file
        changes in place)."""
        while True:
            await asyncio.sleep(KEYS_EVERY_S)
            outcome = await asyncio.to_thread(keys.reload_if_changed)  # a file read: not on the loop
            if outcome is None:
                continue
            applied, what = outcome
            m.API_KEY_RELOADS.labels("applied" if applied else "refused").inc()
            m.API_KEYS.set(len(keys))
            if applied:
                log.info("--api-keys-file %s changed: %s", self.settings.api_keys_file, what)
            else:
                log.error("--api-keys-file changed and is refused, the keys before stay in force: %s", what)

    async def _watch_broker(self, gateway: Gateway, config: dict[str, Any]) -> None:
        """Broker reachability for readiness, and the reply-partition gauge."""
        client = admin(config)
        topic = gateway.client.topics.replies
        while True:
            try:
                await asyncio.to_thread(client.list_topics, topic, timeout=2)
                gateway.health.mark_up()
            except Exception:  # noqa: BLE001 - any failure to answer means "unreachable"
                gateway.health.mark_down()
            m.REPLY_PARTITIONS.set(len(gateway.client.owned_partitions))
            await asyncio.sleep(HEALTH_EVERY_S)
