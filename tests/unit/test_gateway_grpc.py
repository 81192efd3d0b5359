"""The gateway's gRPC server as the service builds it (services/gateway/service.py `_grpc_server`), on
loopback, without Kafka: the engine behind it is a stand-in.

Its own module: importing services.gateway.grpc_api generates and loads the protocol's stubs, which
tests/unit/test_gateway.py keeps out of its process.
"""

from __future__ import annotations

import asyncio
import socket
from types import SimpleNamespace

import grpc
import pytest

from services.core.metrics import child
from services.gateway import metrics as m
from services.gateway.grpc_api import pb
from services.gateway.grpc_guard import STARTED
from services.gateway.service import GatewayService
from services.gateway.settings import GatewaySettings

SERVICE = "/inference.GRPCInferenceService"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_the_services_grpc_server_counts_every_call_as_it_begins_refused_by_grpc_or_not() -> None:
    """The interceptor counting the calls gRPC refuses before the gateway's handlers run (grpc_guard.py)
    was tested on a server of the test's own: the service's server could have lost it unnoticed, and
    `rdv_gateway_grpc_calls_started_total` stayed at 0 while a message over --max-body-bytes got
    RESOURCE_EXHAUSTED and an unknown method UNIMPLEMENTED, counted nowhere."""
    settings = GatewaySettings(grpc_addr="127.0.0.1", grpc_port=_free_port(), max_body_bytes=1000)
    gateway = SimpleNamespace(broken=lambda: None)  # all ServerLive asks of the engine

    async def calls() -> tuple[bool, grpc.StatusCode, grpc.StatusCode]:
        server = await GatewayService(settings)._grpc_server(gateway)  # type: ignore[arg-type]
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{settings.grpc_port}") as channel:
                live = channel.unary_unary(f"{SERVICE}/ServerLive",
                                           request_serializer=pb.ServerLiveRequest.SerializeToString,
                                           response_deserializer=pb.ServerLiveResponse.FromString)
                answered = await live(pb.ServerLiveRequest())
                codes = []
                for method, message in ((f"{SERVICE}/ModelInfer", b"\x0a\x01m" + b"\x00" * 5000),
                                        ("/inference.Nope/Nope", b"")):
                    with pytest.raises(grpc.aio.AioRpcError) as refused:
                        await channel.unary_unary(method)(message)
                    codes.append(refused.value.code())
                return answered.live, codes[0], codes[1]
        finally:
            await server.stop(None)

    started, no_route = STARTED._value.get(), child(m.REJECTED, "grpc", "no_route")._value.get()
    live_calls = child(m.CALLS, "grpc", "server_live", "OK")._value.get()
    unimplemented = child(m.CALLS, "grpc", "none", "UNIMPLEMENTED")._value.get()
    assert asyncio.run(calls()) == (True, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNIMPLEMENTED)
    assert STARTED._value.get() == started + 3  # the one served, the one too large, the one to no method
    assert child(m.CALLS, "grpc", "server_live", "OK")._value.get() == live_calls + 1
    assert child(m.REJECTED, "grpc", "no_route")._value.get() == no_route + 1
    assert child(m.CALLS, "grpc", "none", "UNIMPLEMENTED")._value.get() == unimplemented + 1
