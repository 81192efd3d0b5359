"""What the gRPC port refuses before the gateway's handlers run, counted as far as grpc.aio lets.

A server interceptor runs for every call as it begins, before its message is read and before
`maximum_concurrent_rpcs` is applied (checked against grpcio 1.85: a message over the receive
limit, metadata over 16 KiB and a call beyond the limit all pass through it, and none reaches the
handler). It
cannot see how such a call ends (grpc core answers it RESOURCE_EXHAUSTED itself), so it counts
the calls that begin: `rdv_gateway_grpc_calls_started_total` less the calls the handlers counted
(`rdv_gateway_requests_total{protocol="grpc"}`) and those in flight is what gRPC refused itself,
or the caller cancelled before sending its message. A call to a method the service does not
have is known here: it is counted as REST counts an unknown path (route `none`, `no_route`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc
from prometheus_client import Counter

from services.core.metrics import child
from services.gateway import metrics as m

PROTOCOL = "grpc"

STARTED = Counter(
    "rdv_gateway_grpc_calls_started_total",
    "gRPC calls begun, counted before their message is read: beyond rdv_gateway_requests_total{protocol=\"grpc\"} "
    "and rdv_gateway_in_flight{protocol=\"grpc\"}, the calls gRPC refused itself (a message over --max-body-bytes, "
    "calls beyond --max-connections) or whose caller cancelled before sending its message.",
)


class CountingInterceptor(grpc.aio.ServerInterceptor):
    """Counts each call as it begins, and a call to no method of the service as refused."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        STARTED.inc()
        handler = await continuation(handler_call_details)
        if handler is None:  # gRPC answers UNIMPLEMENTED
            child(m.CALLS, PROTOCOL, "none", grpc.StatusCode.UNIMPLEMENTED.name).inc()
            child(m.REJECTED, PROTOCOL, "no_route").inc()
        return handler
