"""The REST binding of the Open Inference Protocol (Starlette), plus health, metrics and the page.

    GET  /v2                                        server metadata
    GET  /v2/health/live | /v2/health/ready          liveness, readiness (no key needed)
    GET  /v2/models/{name}[/versions/{v}]            model metadata
    GET  /v2/models/{name}[/versions/{v}]/ready      model readiness
    POST /v2/models/{name}[/versions/{v}]/infer      inference
    GET  /healthz /readyz /metrics                   the conventions of every service here
    GET  /ui ...                                     the live comparison page (ui.py)

Errors are `{"error": "<message>"}` with the status `errors.status_of` gives. Request bodies are
JSON, or Triton's binary tensor extension (a JSON header of `Inference-Header-Content-Length`
bytes, then each input's raw little-endian data whose size its `binary_data_size` parameter gives).
The deadline header is `X-Timeout-Ms`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any
from urllib.parse import urlsplit

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from services.core.health import READY
from services.core.metrics import child
from services.gateway import metrics as m
from services.gateway import oip
from services.gateway.engine import Gateway, off_the_loop
from services.gateway.errors import (
    BodyTooLarge,
    BodyTooSlow,
    CallError,
    ClientClosed,
    CrossOrigin,
    InvalidInput,
    NotFound,
    RateLimited,
    UnreadableFraming,
    UnsupportedMediaType,
    status_of,
)
from services.gateway.http_guard import CLOSED_BY
from services.gateway.oip import InferCall, Tensor

log = logging.getLogger(__name__)

PROTOCOL = "rest"
TIMEOUT_HEADER = "x-timeout-ms"
BINARY_HEADER = "inference-header-content-length"
SERVER_NAME = "rendezvous-serving"
# A JSON body from this size up is parsed off the event loop (engine.LARGE_BODY is gRPC's): one
# whose members the quick count cannot account for is parsed a second time, in Python, to find a
# key given twice, 29 ms for 256 kB of small objects in a member the protocol has none of, 2.8 ms
# for 32 kB (a review).
LARGE_JSON_BODY = 32 * 1024
WHOLE = re.compile(r"[0-9]{1,15}")  # str.isdigit() takes '²' too, which int() refuses
LONG_WHOLE = re.compile(r"[0-9]{16,}")
MAX_HEADER_MS = 10**15 - 1  # the longest X-Timeout-Ms _whole reads; longer ones are taken as it
# The types a page on another site may send without the CORS consent this gateway never gives
# ("CORS-safelisted"): refused, so no page a user visits can call a gateway that runs without
# API keys on their machine or network. A body is read by what it holds otherwise (as Triton does).
CROSS_SITE_TYPES = frozenset({"text/plain", "application/x-www-form-urlencoded", "multipart/form-data"})

Handler = Callable[[Request], Awaitable[Response]]


NOT_SO = 400  # a v2 health or readiness answer of false


def json_response(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content), status, headers, media_type="application/json")


def error_response(exc: BaseException) -> Response:
    status = status_of(exc)
    if status.http == 500:
        log.error("unexpected failure serving a call", exc_info=exc)
    headers = {"WWW-Authenticate": "Bearer"} if status.http == 401 else {}
    if status.retry:
        # Whole seconds (RFC 9110), rounded up: a client honouring "1" while the bucket needed
        # 100 s only met more 429s.
        wait = exc.retry_after_s if isinstance(exc, RateLimited) else 1.0
        headers["Retry-After"] = str(max(1, math.ceil(wait)))
    return json_response({"error": status.message}, status.http, headers)


def measured(route: str, handler: Handler) -> Handler:
    """Count, time and map the failures of one route."""
    in_flight = child(m.IN_FLIGHT, PROTOCOL)

    async def run(request: Request) -> Response:
        started = time.perf_counter()
        in_flight.inc()
        try:
            response = await handler(request)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a status (errors.status_of)
            response = error_response(exc)
            child(m.REJECTED, PROTOCOL, status_of(exc).reason).inc()
        finally:
            in_flight.dec()
        code = str(response.status_code)
        child(m.CALLS, PROTOCOL, route, code).inc()
        child(m.LATENCY, PROTOCOL, route, code).observe(time.perf_counter() - started)
        return response

    return run


class RestApi:
    def __init__(self, gateway: Gateway, server_version: str):
        self.gateway = gateway
        self.server_version = server_version

    def routes(self) -> list[BaseRoute]:
        model = "/v2/models/{name}"
        versioned = "/v2/models/{name}/versions/{version}"
        # Inference first: routes are matched in order, and it is the route that carries the load.
        routes: list[BaseRoute] = [
            Route(model + "/infer", measured("infer", self.infer), methods=["POST"]),
            Route(versioned + "/infer", measured("infer", self.infer), methods=["POST"]),
            Route("/v2", measured("server_metadata", self.server_metadata)),
            Route("/v2/health/live", measured("server_live", self.live)),
            Route("/v2/health/ready", measured("server_ready", self.ready)),
            Route("/healthz", self.healthz),
            Route("/readyz", self.readyz),
            Route("/metrics", self.metrics),
        ]
        for path in (model, versioned):
            routes += [
                Route(path, measured("model_metadata", self.model_metadata)),
                Route(path + "/ready", measured("model_ready", self.model_ready)),
            ]
        return routes

    # -- health and metadata ------------------------------------------------------------------

    # The protocol's health and readiness answers are their status codes: 200 true, 4xx false
    # (KServe's v2 spec; Triton answers 400). /healthz and /readyz keep 503, as every service here.
    async def live(self, _request: Request) -> Response:
        broken = self.gateway.broken()
        return json_response({"live": False, "reason": broken}, NOT_SO) if broken else json_response({"live": True})

    async def ready(self, _request: Request) -> Response:
        ready, reason = self.gateway.readiness()
        return json_response({"ready": ready, "reason": reason}, 200 if ready else NOT_SO)

    async def healthz(self, _request: Request) -> Response:
        broken = self.gateway.broken()
        return PlainTextResponse(f"{broken}\n", 503) if broken else PlainTextResponse("ok\n")

    async def readyz(self, _request: Request) -> Response:
        ready, reason = self.gateway.readiness()
        READY.set(1 if ready else 0)
        return PlainTextResponse(reason + "\n", 200 if ready else 503)

    async def metrics(self, _request: Request) -> Response:
        READY.set(1 if self.gateway.readiness()[0] else 0)  # as every service: each scrape says it
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    async def server_metadata(self, request: Request) -> Response:
        self.gateway.authenticate(request.headers.get("authorization"))
        return json_response({"name": SERVER_NAME, "version": self.server_version, "extensions": []})

    async def model_metadata(self, request: Request) -> Response:
        self.gateway.authenticate(request.headers.get("authorization"))
        name, version = _name_version(request)
        target = self.gateway.catalog.resolve(name, version)
        return json_response(self.gateway.catalog.metadata(target))

    async def model_ready(self, request: Request) -> Response:
        self.gateway.authenticate(request.headers.get("authorization"))
        name, version = _name_version(request)
        ready = self.gateway.model_ready(name, version)
        return json_response({"name": name, "ready": ready}, 200 if ready else NOT_SO)

    # -- inference --------------------------------------------------------------------------------

    async def infer(self, request: Request) -> Response:
        started = time.monotonic()  # the caller's X-Timeout-Ms counts from here, not from the body parsed
        # Calls refused anyway spend no token: without API keys every caller shares one bucket,
        # and a page's refused cross-origin POSTs would have run it dry for everyone else.
        caller = self.gateway.authenticate(request.headers.get("authorization"))
        name, version = _name_version(request)
        check_origin(request.headers.get("origin"), request.headers.get("host"), self.gateway.settings.allowed_hosts)
        check_media_type(request.headers.get("content-type"))
        check_encoding(request.headers.get("content-encoding"))
        # The headers before the body: a call they make invalid is refused before its data is read.
        deadline = _header_ms(request.headers.get(TIMEOUT_HEADER))
        binary = request.headers.get(BINARY_HEADER)
        if binary is not None and _whole(binary) is None:
            raise _binary_header_refused(binary)
        with self.gateway.spending(caller):
            self.gateway.open_for_calls()  # before the body takes its memory
            body = await _body(request, self.gateway.settings.max_body_bytes)
            s = self.gateway.settings
            call = await off_the_loop(len(body) >= LARGE_JSON_BODY, parse_call, body, binary, s.max_rows,
                                      s.max_features)
            del body  # read into the call: not held (up to --max-body-bytes) while it waits for its answers
            result = await self.gateway.infer(name, version, call, caller, (deadline,), started)
        return json_response(oip.rest_response(result))


def check_origin(origin: str | None, host: str | None, allowed_hosts: Collection[str] = ()) -> None:
    """Refuse a call a web page of another origin makes: a browser names the page's origin on
    every cross-origin POST, and no other client here sends one. A body with no Content-Type
    (a Blob, an ArrayBuffer, sendBeacon) needs no CORS consent either: the type alone did not
    keep pages out (the review of this change).

    A page's call is read only under a name the gateway knows (`page_host_known`): a page on a
    name whose address an attacker switches to this machine (DNS rebinding) is of "the same
    origin" as the gateway to the browser, with an `Origin` equal to the `Host`."""
    if origin is None:
        return
    try:
        parts = urlsplit(origin)
        page, name = parts.netloc.lower(), parts.hostname or ""
    except ValueError:  # "http://[": no browser sends it, and it was a 500 with a traceback logged
        raise CrossOrigin(f"the Origin header is not an origin ({origin[:100]!r}): call the gateway from a server "
                          "or a client library") from None
    if not page or page != (host or "").lower():
        raise CrossOrigin(f"a call from a web page of another origin ({origin[:100]}) is refused: call the gateway "
                          "from a server or a client library")
    if not page_host_known(name, allowed_hosts):
        raise CrossOrigin(f"a call from a web page under the name {name[:100]!r} is refused: a page may call the "
                          "gateway only under localhost, an IP address or a name in --allowed-hosts (any site "
                          "can point a name of its own at this machine)")


def page_host_known(name: str, allowed_hosts: Collection[str]) -> bool:
    """Whether a page under host `name` may call: localhost, an IP address (a page of another site
    cannot have one that is this gateway's: its origin would be the gateway's own address and
    port), or a name the operator listed."""
    if name == "localhost" or name.endswith(".localhost") or name in {h.lower() for h in allowed_hosts}:
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def check_encoding(encoding: str | None) -> None:
    """A compressed body (tritonclient's `request_compression_algorithm`) is refused by name: read
    as it came, it failed as JSON that is "not valid UTF-8", and an uncompressed body labelled gzip
    was answered as if the label were not there."""
    if encoding is not None and encoding.strip().lower() not in ("", "identity"):
        raise UnsupportedMediaType(f"Content-Encoding {encoding.strip()[:40]!r} is not accepted: send the body "
                                   "uncompressed (tritonclient: leave request_compression_algorithm unset)")


def check_media_type(content_type: str | None) -> None:
    """Refuse a body labelled with a type any web page may send cross-site (CROSS_SITE_TYPES)."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type in CROSS_SITE_TYPES:
        raise UnsupportedMediaType(
            f"Content-Type {media_type} is not accepted (a page on any web site may send it): send the body as "
            "application/json (curl: -H 'Content-Type: application/json'), or with no Content-Type")


def _name_version(request: Request) -> tuple[str, str]:
    params = request.path_params
    # Routes match the decoded path: `default%2Fversions%2F1` was the model `default`, version 1.
    # An encoded '/' belongs to the name, and no model name holds one.
    if b"%2f" in request.scope.get("raw_path", b"").lower():
        raise NotFound("no model here: a model name holds no '/' (%2F in the path)")
    return params["name"], params.get("version", "")


async def _body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "").strip()
    if LONG_WHOLE.fullmatch(declared):  # more digits than _whole reads: over any limit (it was waited for)
        raise BodyTooLarge(f"request body of {declared[:20]}... bytes is over the limit of {limit}")
    length = _whole(declared)
    if length is not None and length > limit:
        raise BodyTooLarge(f"request body of {length} bytes is over the limit of {limit}")
    chunks = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(f"request body is over the limit of {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:  # an ordinary hang-up, not the gateway's failure (it counted as internal)
        raise _disconnected(request, size) from None
    return b"".join(chunks)


def _disconnected(request: Request, size: int) -> CallError:
    """Why a call's body ended early: the guard closed its connection (http_guard.py marks why),
    or the caller hung up."""
    reason = request.scope.get(CLOSED_BY)
    if reason == "body_too_slow":
        return BodyTooSlow(f"the request body did not arrive in time ({size} bytes came)")
    if reason == "bad_request":
        return UnreadableFraming(f"the request's framing could not be read after {size} bytes of its body")
    return ClientClosed(f"the caller closed the connection after {size} bytes of its request")


def _whole(value: str | None) -> int | None:
    """A header's whole number (ASCII digits, at most 15 of them), or None."""
    if value is None or not WHOLE.fullmatch(value.strip()):
        return None
    return int(value)


def _header_ms(value: str | None) -> int | None:
    if value is None:
        return None
    if LONG_WHOLE.fullmatch(value.strip()):
        # Longer than any deadline the gateway serves, as a `timeout` of 2^63 - 1 us is: shortened
        # to --max-budget-ms like it (call_budget), not refused as if it were no number.
        return MAX_HEADER_MS
    ms = _whole(value)
    if ms is None or ms <= 0:
        raise InvalidInput(f"header X-Timeout-Ms must be a positive whole number of milliseconds, got {value[:40]!r}")
    return ms


def parse_call(body: bytes, binary_header: str | None, max_rows: int, max_features: int) -> InferCall:
    """An inference call from a REST body (JSON, or JSON + binary tensor data)."""
    header, rest = body, memoryview(b"")
    if binary_header is not None:
        size = _whole(binary_header)
        if size is None or size > len(body):
            raise _binary_header_refused(binary_header)
        # A view: each input's data is sliced from it without copying the rest of the body.
        header, rest = body[:size], memoryview(body)[size:]
    most = oip.max_json_structures(max_rows, max_features)
    # A bracket or a colon is a byte: a body no longer than the bound is not counted (three scans of
    # 8 MiB). The colons too: 8 MiB of one object's members held the event loop 0.3 s (a review).
    if len(header) > most and (structures := header.count(b"[") + header.count(b"{") + header.count(b":")) > most:
        raise InvalidInput(f"the body holds {structures:,} JSON arrays, objects and members, more than a call "
                           f"within --max-rows and --max-features can ({most:,})")
    try:
        document = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidInput("the body must be a JSON object with 'inputs'")
    _check_repeated_keys(document, header)
    call_id = oip.check_id(document.get("id", ""))
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput("'inputs' must be a non-empty list of tensors")
    oip.check_input_count(len(inputs), max_features)
    tensors = None if rest else _plain_tensors(inputs)
    if tensors is None:
        tensors = _tensors(inputs, rest, max_rows, max_features)
    return InferCall(call_id, tuple(tensors), _outputs(document.get("outputs")), _parameters(document))


def _binary_header_refused(value: str) -> InvalidInput:
    return InvalidInput(f"Inference-Header-Content-Length {value[:40]!r} does not fit the body")


def _members(document: dict[str, Any]) -> int:
    """The members of the call's objects where the protocol has them (the call, each input and
    output), parameters aside (`_parameter_members`): each has its colon. An item of `inputs` or
    `outputs` that is no object is refused later as such (its len is no count of members then).
    Counted in C where it can: this runs for every call (a loop over the inputs cost 6 us of 30)."""
    count = len(document)
    for key in ("inputs", "outputs"):
        items = document.get(key)
        if type(items) is list:
            with contextlib.suppress(TypeError):  # an item without a len: refused later
                count += sum(map(len, items))
    return count


def _parameter_members(document: dict[str, Any]) -> int:
    """The members of the call's parameters, and each input's and output's (asked only when the
    count of member colons is over `_members`: parameters are rare)."""
    count = _size(document.get("parameters"))
    for key in ("inputs", "outputs"):
        items = document.get(key)
        if type(items) is list:
            count += sum(_size(item.get("parameters")) for item in items if isinstance(item, dict))
    return count


def _check_repeated_keys(document: dict[str, Any], header: bytes) -> None:
    """InvalidInput if an object of the call gives a key twice (`_refuse_repeated_keys`), checked by
    counts first, in C: a member's colon follows its key's closing quote but for whitespace, so
    with the whitespace taken out there are at least as many `":` as members and repeated keys
    together, and as many only if none is repeated. More (a key twice, or a string holding `":`
    or `" :`): the body is parsed again to tell. Counting `":` in the body as written, a space
    before a colon hid a repeated key; counting every colon, a colon in a name (ns:f1) or a
    space before each colon (Jackson's pretty printer) made a walk of every string that doubled
    the parse (reviews)."""
    spaced = b" " in header or b"\n" in header or b"\t" in header or b"\r" in header  # memchr: a compact one is not
    colons = (header.translate(None, b" \t\r\n") if spaced else header).count(b'":')
    if colons != (members := _members(document)) and colons != members + _parameter_members(document):
        _refuse_repeated_keys(header)


def _size(value: Any) -> int:
    return len(value) if isinstance(value, dict) else 0


def _refuse_repeated_keys(header: bytes) -> None:
    """InvalidInput if an object of the call gives a key twice. orjson keeps the last value, where
    other readers keep the first: a body `"data": [1.0], "data": [999.0]` was answered on 999.0
    (a review). Parsed again, slower (json with a hook), only for a body whose count of member
    colons is more than the members orjson found (`_check_repeated_keys`)."""

    def distinct(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        found = dict(pairs)
        if len(found) != len(pairs):
            seen: set[str] = set()
            for key, _value in pairs:
                if key in seen:
                    raise InvalidInput(f"the body gives the key {key[:100]!r} twice in one object: send each once")
                seen.add(key)
        return found

    try:
        json.loads(header, object_pairs_hook=distinct)
    except RecursionError:  # orjson reads deeper than this parse (a 500 and a logged traceback; a review)
        raise InvalidInput("the body nests its arrays and objects too deep") from None


def _tensors(inputs: list[Any], rest: memoryview, max_rows: int, max_features: int) -> list[Tensor]:
    """Every input tensor of a call, each checked, its data read from JSON or the binary part."""
    # Every input's header first: the shapes say what the data would cost before any is read.
    shapes = oip.checked_headers((_fields(item, index) for index, item in enumerate(inputs)), max_rows, max_features)
    tensors, used = [], 0
    for item, shape in zip(inputs, shapes, strict=True):
        tensor, size = _tensor(item, shape, rest[used:])
        tensors.append(tensor)
        used += size
    if used != len(rest):
        raise InvalidInput(f"{len(rest) - used} bytes of binary data belong to no input")
    return tensors


def _plain_tensors(inputs: list[Any]) -> list[Tensor] | None:
    """The inputs if every one is plain (`_plain_tensor`), else None."""
    tensors = []
    for item in inputs:
        tensor = _plain_tensor(item)
        if tensor is None:
            return None
        tensors.append(tensor)
    return tensors


def _plain_tensor(item: Any) -> Tensor | None:
    """The common input, one feature's one FP64 value and nothing else, read as `_tensor` reads it
    after `oip.check_header`; None for any other, which those check. The checks it leaves out hold
    for it: one row is within --max-rows (at least 1), and a value each within the budget of rows x
    features, the call having no more inputs than --max-features (`oip.check_input_count`, first)."""
    if type(item) is not dict or len(item) != 4:
        return None
    name, shape, data = item.get("name"), item.get("shape"), item.get("data")
    if (type(name) is str and name and oip.short_name(name)
            and item.get("datatype") == "FP64"
            and type(shape) is list and len(shape) == 1 and type(shape[0]) is int and shape[0] == 1
            and type(data) is list and len(data) == 1 and type(data[0]) is float):
        return Tensor(name, "FP64", (1,), data, {})
    return None


def _parameters(document: dict[str, Any]) -> dict[str, Any]:
    return _kept(document.get("parameters"), "the call", "", oip.CALL_PARAMETERS)


def _kept(params: Any, where: str, prefix: str, read: frozenset[str]) -> dict[str, Any]:
    """The parameters in `read` of a call, an input or an output (`where` in errors, `prefix`
    before "'parameters' must be an object"); every one is held to the protocol's types."""
    if params is None:  # the common case: no message made for a check that cannot fail
        return {}
    if not isinstance(params, dict):
        raise InvalidInput(f"{prefix}'parameters' must be an object")
    return oip.kept_parameters(params, where, read)


def _outputs(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, list) and len(value) > len(oip.OUTPUTS):
        raise InvalidInput(f"{len(value)} outputs asked for; there are {len(oip.OUTPUTS)}: {', '.join(oip.OUTPUTS)}")
    if not isinstance(value, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in value):
        raise InvalidInput("'outputs' must be a list of objects with a 'name'")
    for output in value:  # none read: checked as a call's or an input's are (a list, a nested object passed; a review)
        if output.get("parameters") is not None:
            where = f"output {output['name'][:100]!r}"
            _kept(output["parameters"], where, f"{where}: ", frozenset())
    return oip.requested_outputs(o["name"] for o in value)


def _fields(item: Any, index: int) -> tuple[Any, Any, Any]:
    """An input's name, datatype and shape as sent (checked by `oip.checked_headers`)."""
    if not isinstance(item, dict):
        raise InvalidInput(f"inputs[{index}] must be an object")
    return item.get("name"), item.get("datatype"), item.get("shape")


def _tensor(item: dict[str, Any], header: tuple[str, str, tuple[int, ...]], binary: memoryview) -> tuple[Tensor, int]:
    """One input tensor, and how many bytes of binary data it took."""
    name, datatype, shape = header
    params = _kept(item.get("parameters"), f"input '{name}'", f"input '{name}': ", oip.TENSOR_PARAMETERS)
    size = params.get("binary_data_size")
    if size is not None:
        if "data" in item:  # which of the two would be the call's? Neither is read quietly (as gRPC's)
            raise InvalidInput(f"input '{name}': both binary_data_size and 'data'; send one")
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= len(binary):
            raise InvalidInput(f"input '{name}': binary_data_size {size!r} does not fit the binary data")
        return Tensor(name, datatype, shape, oip.from_raw(name, datatype, shape, binary[:size]), params), size
    if "data" not in item:
        raise InvalidInput(f"input '{name}' has no 'data'")
    return Tensor(name, datatype, shape, oip.from_list(name, datatype, shape, item["data"]), params), 0


async def _no_route(request: Request, exc: Exception) -> Response:
    """Unknown paths and methods answer in the protocol's error shape too, not Starlette's text,
    counted under the route `none`."""
    status = getattr(exc, "status_code", 404)
    child(m.CALLS, PROTOCOL, "none", str(status)).inc()
    child(m.REJECTED, PROTOCOL, "no_route").inc()
    what = "no such path" if status == 404 else f"method {request.method} not allowed here"
    return json_response({"error": f"{what}: {request.url.path}"}, status, getattr(exc, "headers", None))  # Allow


def build_app(api: RestApi, extra: list[BaseRoute]) -> Starlette:
    app = Starlette(routes=[*api.routes(), *extra], exception_handlers={404: _no_route, 405: _no_route})
    # Starlette answers `/v2/` with a bare 307 to `/v2`, built from the caller's Host header (a
    # redirect to any site named there), before the key check, counted nowhere: no such path.
    app.router.redirect_slashes = False
    return app
