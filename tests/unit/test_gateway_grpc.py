"""The gateway's gRPC server as the service builds it (services/gateway/service.py `_grpc_server`), on
loopback, without Kafka: the engine behind it is a stand-in.

The server runs in a child process: importing services.gateway.grpc_api loads the protocol's
stubs into protobuf's one descriptor pool, which refuses them where tritonclient's own `inference.*`
messages are loaded already (tests/integration/test_gateway.py imports it, and pytest-xdist
collects every test module in each of its processes: CI failed at collection).
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SERVICE = "/inference.GRPCInferenceService"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _counted_calls() -> dict[str, Any]:
    """In the child: three calls to the service's own server (one served, one over --max-body-bytes,
    one to no method), their status codes and how the gateway's metrics moved."""
    from types import SimpleNamespace

    import grpc

    from services.core.metrics import child
    from services.gateway import metrics as m
    from services.gateway.grpc_api import pb
    from services.gateway.grpc_guard import STARTED
    from services.gateway.service import GatewayService
    from services.gateway.settings import GatewaySettings

    settings = GatewaySettings(grpc_addr="127.0.0.1", grpc_port=_free_port(), max_body_bytes=1000)
    gateway = SimpleNamespace(broken=lambda: None)  # all ServerLive asks of the engine

    async def calls() -> list[Any]:
        server = await GatewayService(settings)._grpc_server(gateway)  # type: ignore[arg-type]
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{settings.grpc_port}") as channel:
                live = channel.unary_unary(f"{SERVICE}/ServerLive",
                                           request_serializer=pb.ServerLiveRequest.SerializeToString,
                                           response_deserializer=pb.ServerLiveResponse.FromString)
                outcomes: list[Any] = [(await live(pb.ServerLiveRequest())).live]
                for method, message in ((f"{SERVICE}/ModelInfer", b"\x0a\x01m" + b"\x00" * 5000),
                                        ("/inference.Nope/Nope", b"")):
                    try:
                        await channel.unary_unary(method)(message)
                        outcomes.append("answered")
                    except grpc.aio.AioRpcError as refused:
                        outcomes.append(refused.code().name)
                return outcomes
        finally:
            await server.stop(None)

    def counts() -> dict[str, float]:
        return {"started": STARTED._value.get(),
                "live_ok": child(m.CALLS, "grpc", "server_live", "OK")._value.get(),
                "no_route": child(m.REJECTED, "grpc", "no_route")._value.get(),
                "unimplemented": child(m.CALLS, "grpc", "none", "UNIMPLEMENTED")._value.get()}

    before = counts()
    outcomes = asyncio.run(calls())
    after = counts()
    return {"outcomes": outcomes, "moved": {key: after[key] - before[key] for key in before}}


def test_the_services_grpc_server_counts_every_call_as_it_begins_refused_by_grpc_or_not() -> None:
    """The interceptor counting the calls gRPC refuses before the gateway's handlers run (grpc_guard.py)
    was tested on a server of the test's own: the service's server could have lost it unnoticed, and
    `rdv_gateway_grpc_calls_started_total` stayed at 0 while a message over --max-body-bytes got
    RESOURCE_EXHAUSTED and an unknown method UNIMPLEMENTED, counted nowhere."""
    script = "import json; from tests.unit.test_gateway_grpc import _counted_calls; print(json.dumps(_counted_calls()))"
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["outcomes"] == [True, "RESOURCE_EXHAUSTED", "UNIMPLEMENTED"]
    # The one served, the one too large, the one to no method: all three counted as they began.
    assert result["moved"] == {"started": 3, "live_ok": 1, "no_route": 1, "unimplemented": 1}
