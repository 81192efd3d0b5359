"""The gRPC binding: `inference.GRPCInferenceService` on grpc.aio, over the same engine as REST.

Inputs may come as typed `contents` or as `raw_input_contents`; outputs always go out as
`raw_output_contents` (little-endian FP64 for `score`; BYTES elements each prefixed by their
4-byte little-endian length, the layout OIP clients decode). The API key comes in the
`authorization` metadata (`Bearer <key>`); the call's deadline is the gRPC deadline.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import numpy as np
from google.protobuf.message import DecodeError

from services.core.metrics import child
from services.gateway import metrics as m
from services.gateway import oip
from services.gateway.engine import LARGE_BODY, Gateway, off_the_loop
from services.gateway.errors import BodyTooSlow, InvalidInput, status_of
from services.gateway.grpc_bounds import check_infer_request
from services.gateway.grpc_guard import authorization
from services.gateway.http_guard import BODY_TIMEOUT_S as MESSAGE_TIMEOUT_S
from services.gateway.oip import InferCall, InferResult, Tensor
from services.gateway.proto import stubs
from services.gateway.rest import SERVER_NAME

log = logging.getLogger(__name__)

PROTOCOL = "grpc"
pb, pb_grpc = stubs()

R = TypeVar("R")

# InferTensorContents field holding each numeric type.
CONTENTS = {
    "FP64": "fp64_contents", "FP32": "fp32_contents", "INT64": "int64_contents", "UINT64": "uint64_contents",
    "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
}  # fmt: skip


def _authorization(context: grpc.aio.ServicerContext) -> str | None:
    return authorization(context.invocation_metadata())


class InferenceService:
    """The servicer: method names are the protocol's (registered by the generated `add_..._to_server`)."""

    def __init__(self, gateway: Gateway, server_version: str):
        self.gateway = gateway
        self.server_version = server_version

    async def _measured(
        self, route: str, request: Any, context: grpc.aio.ServicerContext, work: Callable[[], Awaitable[R]],
        keyed: bool = True,
    ) -> R:
        started = time.perf_counter()
        in_flight = child(m.IN_FLIGHT, PROTOCOL)
        in_flight.inc()
        code = grpc.StatusCode.OK
        try:
            if isinstance(request, NoMessage):
                if keyed:  # the key first, as REST checks it before the body: garbage without one is a 401
                    self.gateway.authenticate(_authorization(context))
                raise request.error
            return await work()
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:  # every failure becomes a status (errors.status_of)
            status = status_of(exc)
            if status.http == 500:
                log.error("unexpected failure serving a gRPC call", exc_info=exc)
            # Its frames hold the call's request and data (megabytes): freed now, not when the
            # collector next finds the cycle through the abort's exception.
            exc.__traceback__ = None
            code = status.grpc
            child(m.REJECTED, PROTOCOL, status.reason).inc()
            await context.abort(status.grpc, status.message)
            raise  # abort raises; this line is never reached
        finally:
            in_flight.dec()
            child(m.CALLS, PROTOCOL, route, code.name).inc()
            child(m.LATENCY, PROTOCOL, route, code.name).observe(time.perf_counter() - started)

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def work() -> Any:
            return pb.ServerLiveResponse(live=self.gateway.broken() is None)
        return await self._measured("server_live", request, context, work, keyed=False)

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def work() -> Any:
            return pb.ServerReadyResponse(ready=self.gateway.readiness()[0])
        return await self._measured("server_ready", request, context, work, keyed=False)

    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def work() -> Any:
            self.gateway.authenticate(_authorization(context))
            return pb.ModelReadyResponse(ready=self.gateway.model_ready(request.name, request.version))
        return await self._measured("model_ready", request, context, work)

    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def work() -> Any:
            self.gateway.authenticate(_authorization(context))
            return pb.ServerMetadataResponse(name=SERVER_NAME, version=self.server_version, extensions=[])
        return await self._measured("server_metadata", request, context, work)

    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def work() -> Any:
            self.gateway.authenticate(_authorization(context))
            catalog = self.gateway.catalog
            meta = catalog.metadata(catalog.resolve(request.name, request.version))
            tensor = pb.ModelMetadataResponse.TensorMetadata
            return pb.ModelMetadataResponse(
                name=meta["name"], versions=meta["versions"], platform=meta["platform"],
                inputs=[tensor(**t) for t in meta["inputs"]], outputs=[tensor(**t) for t in meta["outputs"]],
            )
        return await self._measured("model_metadata", request, context, work)

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def work() -> Any:
            started = time.monotonic()
            deadline = oip.grpc_deadline_ms(context.time_remaining(), self.gateway.settings.grpc_reply_margin_ms)
            caller = self.gateway.authenticate(_authorization(context))
            with self.gateway.spending(caller):
                self.gateway.open_for_calls()  # before the message is turned into rows
                s = self.gateway.settings
                call = await off_the_loop(request.ByteSize() >= LARGE_BODY, call_from, request, s.max_rows,
                                          s.max_features)
                name, version = request.model_name, request.model_version
                # Read into the call: emptied, not held while the call waits for its answers (grpc
                # holds the message until the method returns: with its unread fields, 86 MB a call).
                request.Clear()
                result = await self.gateway.infer(name, version, call, caller, (deadline,), started)
            return response_from(result)
        return await self._measured("infer", request, context, work)


def _parameters(mapping: Any, where: str, read: frozenset[str]) -> dict[str, Any]:
    """The parameters in `read`. Values are typed here; one with none of them set is refused,
    read or not, as REST refuses a null (it was taken without a word; a review)."""
    oip.check_parameter_count(len(mapping), where)
    kept = {}
    for key, value in mapping.items():
        kind = value.WhichOneof("parameter_choice")
        if kind is None:
            raise InvalidInput(f"{where}: parameter {key[:100]!r} has no value (set one of bool_param, int64_param, "
                               "string_param, double_param, uint64_param)")
        if key in read:
            kept[key] = getattr(value, kind)
    return kept


def call_from(request: Any, max_rows: int, max_features: int) -> InferCall:
    oip.check_input_count(len(request.inputs), max_features)
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs")
    # Every input's header first: the shapes say what the data would cost before any is read.
    headers = oip.checked_headers([(item.name, item.datatype, list(item.shape)) for item in request.inputs],
                                  max_rows, max_features)
    tensors = []
    for index, (item, (name, datatype, shape)) in enumerate(zip(request.inputs, headers, strict=True)):
        if raw:
            if item.HasField("contents"):
                raise InvalidInput(f"input '{name}': data in both contents and raw_input_contents; send one")
            values = oip.from_raw(name, datatype, shape, raw[index])
        else:
            values = _contents(name, datatype, shape, item.contents)
        # No parameters, the common case: no message made for a check that cannot fail (as REST's `_tensor`).
        params = _parameters(item.parameters, f"input '{name}'", oip.TENSOR_PARAMETERS) if item.parameters else {}
        tensors.append(Tensor(name, datatype, shape, values, params))
    for output in request.outputs:  # none read: checked as a call's or an input's are (a review)
        if output.parameters:
            _parameters(output.parameters, f"output {output.name[:100]!r}", frozenset())
    outputs = oip.requested_outputs(o.name for o in request.outputs)
    return InferCall(oip.check_id(request.id), tuple(tensors), outputs,
                     _parameters(request.parameters, "the call", oip.CALL_PARAMETERS))


def _contents(name: str, datatype: str, shape: tuple[int, ...], contents: Any) -> list[float]:
    field = CONTENTS.get(datatype)
    if field is None:
        raise InvalidInput(f"input '{name}': {datatype} data must come as raw_input_contents")
    # Values in another field than the datatype's were dropped unread, the call answered without them.
    other = next((f.name for f, _values in contents.ListFields() if f.name != field), None)
    if other is not None:
        raise InvalidInput(f"input '{name}': data in {other}; {datatype} data comes in {field}")
    return oip.from_numbers(name, datatype, shape, list(getattr(contents, field)), f"in {field} ")


def _param(value: Any) -> Any:
    if isinstance(value, bool):
        return pb.InferParameter(bool_param=value)
    if isinstance(value, int):
        return pb.InferParameter(int64_param=value)
    return pb.InferParameter(string_param=str(value))


def response_from(result: InferResult) -> Any:
    n = len(result.rows)
    response = pb.ModelInferResponse(model_name=result.model_name, model_version=result.model_version, id=result.id)
    for key, value in result.parameters().items():
        response.parameters[key].CopyFrom(_param(value))
    for name, datatype, data in result.columns():
        response.outputs.add(name=name, datatype=datatype, shape=[n])
        raw = np.asarray(data, dtype="<f8").tobytes() if datatype == "FP64" else oip.raw_bytes(data)
        response.raw_output_contents.append(raw)
    return response


@dataclass(frozen=True)
class NoMessage:
    """A call without a message the method can take: one that did not come in time, or that
    protobuf could not parse (garbage, text that is not UTF-8). Handed to the method, which
    refuses it (counted) with this error; left to grpc, a parse error was an UNKNOWN status,
    counted nowhere, with a 7-line traceback logged per call."""

    error: Exception


def _one_message(method: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]],
                 timeout_s: float) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
    """A unary method served as a stream of requests, its one message read here within `timeout_s`.

    Why: grpc.aio runs a unary method only once its message is read, and takes its place among
    `maximum_concurrent_rpcs` (--max-connections) as the call begins: callers that opened calls and
    never sent their message held every place for good, health checks locked out with the rest
    (a review). On the wire a unary call is a stream of one message, so its callers see no change.
    As the REST guard bounds a body's time (http_guard.py), a message not read in `timeout_s` is
    refused with DEADLINE_EXCEEDED, counted as `body_too_slow`."""

    async def behavior(requests: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            request = await asyncio.wait_for(anext(aiter(requests)), timeout_s)
        except TimeoutError:
            request = NoMessage(BodyTooSlow(f"the call's message did not arrive within {timeout_s:g} s"))
        except StopAsyncIteration:
            # No message will come: grpc refused it itself (over --max-body-bytes: its RESOURCE_EXHAUSTED
            # is sent, and this status goes nowhere), or the caller cancelled or half-closed without
            # one. Ended here, not counted by the method: as before, such a call counts only as one
            # begun (grpc_guard.py), never as the caller's invalid input (a review).
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the call ended without its message")
        return await method(request, context)

    return behavior


# From this size on, a ModelInferRequest's repeated fields are counted before it is parsed
# (grpc_bounds.py): a smaller one holds at most ~2,000 entries, parsed in under 2 ms.
COUNTED_FROM_BYTES = 16 * 1024


def _lenient(message: Any, check: Callable[[bytes], None] | None = None) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            if check is not None and len(data) >= COUNTED_FROM_BYTES:
                check(data)
            return message.FromString(data)
        except InvalidInput as exc:
            return NoMessage(exc)
        except DecodeError as exc:
            return NoMessage(InvalidInput(f"the message is not a valid {message.__name__}: {str(exc)[:200]}"))

    return parse


def add_to(server: grpc.aio.Server, service: InferenceService, max_features: int, max_rows: int) -> None:
    """The protocol's methods (as the generated `add_..._to_server` registers them), each message
    read by `_one_message` within MESSAGE_TIMEOUT_S and parsed by `_lenient` (a ModelInferRequest
    counted first against `max_features` and `max_rows`: grpc_bounds.py)."""
    descriptor = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    checks = {"ModelInferRequest": lambda data: check_infer_request(data, max_features, max_rows * max_features)}
    handlers = {
        method.name: grpc.stream_unary_rpc_method_handler(
            _one_message(getattr(service, method.name), MESSAGE_TIMEOUT_S),
            request_deserializer=_lenient(getattr(pb, method.input_type.name), checks.get(method.input_type.name)),
            response_serializer=getattr(pb, method.output_type.name).SerializeToString,
        )
        for method in descriptor.methods
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(descriptor.full_name, handlers),))
