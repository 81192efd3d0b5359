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
    gateway = SimpleNamespace(broken=lambda: None, keys=None)  # all ServerLive asks of the engine

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
                "invalid": child(m.REJECTED, "grpc", "invalid")._value.get(),
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
    assert result["moved"] == {"started": 3, "live_ok": 1, "no_route": 1, "unimplemented": 1, "invalid": 0}


def _output_parameter_checks() -> list[str]:
    """In the child: an output parameter with no value, then with one, read by `call_from`."""
    from services.gateway.errors import InvalidInput
    from services.gateway.grpc_api import call_from, pb

    request = pb.ModelInferRequest(model_name="default")
    tensor = request.inputs.add(name="a", datatype="FP64", shape=[1])
    tensor.contents.fp64_contents.append(1.0)
    asked = request.outputs.add(name="score")
    said = []
    for parameter in (pb.InferParameter(), pb.InferParameter(int64_param=1)):
        asked.parameters["x"].CopyFrom(parameter)
        try:
            said.append(",".join(call_from(request, 1000, 1024).outputs))
        except InvalidInput as refused:
            said.append(str(refused))
    return said


def test_an_output_parameter_without_a_value_is_refused_as_a_call_s_is() -> None:
    """It was taken without a word, where the call's and the inputs' were refused (a review)."""
    script = ("import json; from tests.unit.test_gateway_grpc import _output_parameter_checks; "
              "print(json.dumps(_output_parameter_checks()))")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    refused, taken = json.loads(done.stdout.strip().splitlines()[-1])
    assert refused.startswith("output 'score': parameter 'x' has no value") and taken == "score"


def _stalled_calls() -> dict[str, Any]:
    """In the child: --max-connections 3 and a 1 s message timeout; three calls that never send
    their message and one that ends without one, then ServerLive asked until it is answered."""
    import time
    from types import SimpleNamespace

    import grpc

    from services.core.metrics import child
    from services.gateway import grpc_api
    from services.gateway import metrics as m
    from services.gateway.grpc_api import pb
    from services.gateway.grpc_guard import STARTED
    from services.gateway.service import GatewayService
    from services.gateway.settings import GatewaySettings

    grpc_api.MESSAGE_TIMEOUT_S = 1.0
    settings = GatewaySettings(grpc_addr="127.0.0.1", grpc_port=_free_port(), max_connections=3)
    gateway = SimpleNamespace(broken=lambda: None, authenticate=lambda _key: None, keys=None)  # no API keys

    async def never() -> Any:
        await asyncio.Event().wait()
        yield b""  # never reached: an async generator that sends nothing

    async def nothing() -> Any:
        return
        yield b""  # an async generator that ends at once: the call half-closes with no message

    async def calls() -> dict[str, Any]:
        server = await GatewayService(settings)._grpc_server(gateway)  # type: ignore[arg-type]
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{settings.grpc_port}") as channel:
                infer = channel.stream_unary(f"{SERVICE}/ModelInfer")
                begun = STARTED._value.get()
                stalled = [asyncio.ensure_future(infer(never())) for _ in range(3)]
                while STARTED._value.get() < begun + 3:  # each has its place before ServerLive asks
                    await asyncio.sleep(0.01)
                live = channel.unary_unary(f"{SERVICE}/ServerLive",
                                           request_serializer=pb.ServerLiveRequest.SerializeToString,
                                           response_deserializer=pb.ServerLiveResponse.FromString)
                started, answered = time.monotonic(), False
                while not answered and time.monotonic() - started < 20:
                    try:
                        answered = (await live(pb.ServerLiveRequest(), timeout=5)).live
                    except grpc.aio.AioRpcError:
                        await asyncio.sleep(0.1)  # every place held: asked again
                if not answered:  # locked out: the stalled calls would wait forever too
                    for call in stalled:
                        call.cancel()
                    return {"live": False, "ended": []}
                ended = []
                for call in (*stalled, None):
                    try:
                        await (call if call is not None else infer(nothing()))  # that one once all ended
                        ended.append("answered")
                    except grpc.aio.AioRpcError as refused:
                        ended.append(f"{refused.code().name}: {refused.details()}")
                return {"live": answered, "ended": ended}
        finally:
            await server.stop(None)

    before = {reason: child(m.REJECTED, "grpc", reason)._value.get() for reason in ("body_too_slow", "invalid")}
    result = asyncio.run(calls())
    for reason, count in before.items():
        result[reason] = child(m.REJECTED, "grpc", reason)._value.get() - count
    return result


def test_calls_that_never_send_their_message_give_their_places_back() -> None:
    """grpc.aio gives a unary call its place among --max-connections as it begins and runs the
    method only once the message is read: three calls that never sent one locked every other
    caller out (ServerLive included) for good. Now their message is awaited 1 s (30 in service)."""
    script = "import json; from tests.unit.test_gateway_grpc import _stalled_calls; print(json.dumps(_stalled_calls()))"
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["live"] is True
    assert result["ended"] == ["DEADLINE_EXCEEDED: the call's message did not arrive within 1 s"] * 3 + [
        "INVALID_ARGUMENT: the call ended without its message"]
    assert result["body_too_slow"] == 3 and result["invalid"] == 0


def _keyed_calls() -> dict[str, Any]:
    """In the child: a keyed gateway's server whose engine can do little but say it is live; calls
    to ModelInfer without a key, with a wrong one, and with the right one, each a message that
    does not parse, and ServerLive without a key."""
    import hashlib
    from types import SimpleNamespace

    import grpc

    from services.core.metrics import child
    from services.gateway import metrics as m
    from services.gateway.auth import ApiKeys
    from services.gateway.grpc_api import pb
    from services.gateway.service import GatewayService
    from services.gateway.settings import GatewaySettings

    settings = GatewaySettings(grpc_addr="127.0.0.1", grpc_port=_free_port())
    keys = ApiKeys.load("", (f"alice:{hashlib.sha256(b'right-key').hexdigest()}",))
    handled: list[str | None] = []  # the keys a handler was given: those that got past the interceptor

    def authenticate(key: str | None) -> str:
        handled.append(key)
        return keys.identify(key)

    gateway = SimpleNamespace(broken=lambda: None, keys=keys, authenticate=authenticate)

    async def calls() -> list[str]:
        server = await GatewayService(settings)._grpc_server(gateway)  # type: ignore[arg-type]
        outcomes = []
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{settings.grpc_port}") as channel:
                infer = channel.unary_unary(f"{SERVICE}/ModelInfer")
                for key in ("", "Bearer wrong-key", "Bearer right-key"):
                    metadata = (("authorization", key),) if key else ()
                    try:
                        await infer(b"\xff\xff not a message", metadata=metadata)
                        outcomes.append("answered")
                    except grpc.aio.AioRpcError as refused:
                        outcomes.append(refused.code().name)
                live = channel.unary_unary(f"{SERVICE}/ServerLive",
                                           request_serializer=pb.ServerLiveRequest.SerializeToString,
                                           response_deserializer=pb.ServerLiveResponse.FromString)
                outcomes.append(str((await live(pb.ServerLiveRequest())).live))
                return outcomes
        finally:
            await server.stop(None)

    before = child(m.REJECTED, "grpc", "unauthenticated")._value.get()
    outcomes = asyncio.run(calls())
    return {"outcomes": outcomes, "unauthenticated": child(m.REJECTED, "grpc", "unauthenticated")._value.get() - before,
            "counted": child(m.CALLS, "grpc", "infer", "UNAUTHENTICATED")._value.get(), "handled": handled}


def test_a_keyed_grpc_call_without_a_valid_key_is_refused_before_its_message_is_read() -> None:
    """The handlers checked the key after gRPC had parsed the message on the event loop: callers
    without a key sending 8 MiB messages of 590,000 tiny inputs took the keyed callers' p50 from
    1.4 ms to 737 ms (a review). Refused before any handler: the stand-in engine here has none."""
    script = "import json; from tests.unit.test_gateway_grpc import _keyed_calls; print(json.dumps(_keyed_calls()))"
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    # The right key passes to the handler, which finds the message unreadable (the engine is not asked).
    assert result["outcomes"] == ["UNAUTHENTICATED", "UNAUTHENTICATED", "INVALID_ARGUMENT", "True"]
    assert result["unauthenticated"] == 2 and result["counted"] == 2
    assert result["handled"] == ["Bearer right-key"]  # the others never reached a handler, nor its parse
