"""The gateway as its callers see it: real clients nobody here wrote (NVIDIA's tritonclient over HTTP and
gRPC, curl) and a real browser (Playwright driving Debian's Chromium), against the real stack.

One stack for the module, every service a child process of the CLI on the session broker:
  models      champion, challenger, canary; flaky (in no schedule at first: it fails the rows
              whose mean_radius is above the 80th percentile);
  rendezvous  --models champion,challenger,canary (schedule `default` v1);
  comparison  --export-interval-s 1, with a metrics port (the /ui page's source);
  gateway A   plain: REST + gRPC, --comparison-url;
  gateway B   TLS (a self-signed certificate made with openssl), API keys, a rate limit.
A and B share the replies topic's partitions (one consumer group). A third gateway is started
and stopped with SIGTERM while calls wait on it (the rendezvous is paused with SIGSTOP meanwhile,
then resumed: it answers every request the stopped gateway had sent).

The gateway runs in its own process, as in production; the test process holds tritonclient's
protobuf messages, which share their names with the gateway's (the same protocol).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from services.cli.common import ensure_topics
from services.control.schedule import Schedule
from services.control.topic import publish
from services.core.kafka import wait_for_groups
from services.core.runtime import now_ms
from services.core.settings import Topics
from services.model_worker.models import DEMO_FEATURES, demo_rows
from services.model_worker.models.base import features_to_matrix
from services.model_worker.models.demo import challenger, champion, flaky_rejects
from tests.integration.harness import read_topic, wait_until
from tests.integration.oip import oip_inputs
from tests.integration.prometheus_harness import ChildProcesses, free_port

pytestmark = pytest.mark.kafka

MODELS = ("champion", "challenger", "canary")
# Every call that must be answered OK gets this long: seven services, a JVM and a browser share
# two cores here, and a score late by a stall would turn an OK into a FALLBACK or a 504.
DEADLINE_MS = 10_000
ALICE, BOB = "alice-" + "k" * 40, "bob-" + "k" * 40
CURL = shutil.which("curl") or "/usr/bin/curl"


@dataclass
class Gateway:
    name: str
    http: int
    grpc: int
    tls: Path | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.http}"

    def get(self, path: str) -> tuple[int, str]:
        return curl(self, "GET", path)

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return parse_metrics(self.get("/metrics")[1])


@dataclass
class Stack:
    config: dict[str, Any]
    topics: Topics
    prefix: str
    children: ChildProcesses
    a: Gateway
    b: Gateway
    comparison_metrics: str
    common: list[str]
    tmp: Path


def curl(gateway: Gateway, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None, content_type: str = "application/json") -> tuple[int, str]:
    """`curl`, the real one: (status, body)."""
    args = [CURL, "-s", "-S", "-X", method, "-w", "\n%{http_code}", "--max-time", "30"]
    if gateway.tls:
        args += ["--cacert", str(gateway.tls)]
    for key, value in (headers or {}).items():
        args += ["-H", f"{key}: {value}"]
    if body is not None:
        # "Content-Type:" with no value: curl sends none (else --data-binary would send a form's)
        args += ["-H", f"Content-Type: {content_type}" if content_type else "Content-Type:", "--data-binary", "@-"]
    done = subprocess.run([*args, gateway.url + path], input=body, capture_output=True, timeout=60, check=True)
    text, _, code = done.stdout.decode().rpartition("\n")
    return int(code), text


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def make_certificate(directory: Path) -> tuple[Path, Path]:
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
    return key, cert


def start_gateway(children: ChildProcesses, name: str, common: list[str], *extra: str,
                  tls: Path | None = None) -> Gateway:
    gateway = Gateway(name, free_port(), free_port(), tls)
    children.cli(name, "gateway", *common, "--http-addr", "127.0.0.1", "--grpc-addr", "127.0.0.1",
                 "--http-port", str(gateway.http), "--grpc-port", str(gateway.grpc), "--instance", name, *extra)
    return gateway


def ready(gateway: Gateway) -> bool:
    try:
        return gateway.get("/v2/health/ready")[0] == 200
    except subprocess.CalledProcessError:
        return False  # not listening yet


@pytest.fixture(scope="module")
def stack(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("gateway")
    config = {"bootstrap.servers": bootstrap}
    prefix = f"g{np.random.default_rng().integers(1 << 40):x}."
    topics = Topics.from_prefix(prefix)
    ensure_topics(config, topics, partitions=4)
    children = ChildProcesses(tmp)
    common = ["--bootstrap", bootstrap, "--topic-prefix", prefix]
    key, cert = make_certificate(tmp)
    keys = tmp / "keys.txt"
    keys.write_text("".join(f"{n}:{hashlib.sha256(k.encode()).hexdigest()}\n" for n, k in (("alice", ALICE),
                                                                                           ("bob", BOB))))
    cmp_port = free_port()
    try:
        for model in (*MODELS, "flaky"):
            children.cli(model, "model", "serve", *common, "--model", f"demo:{model}", "--name", model)
        children.cli("rendezvous", "serve", *common, "--models", ",".join(MODELS), "--deadline-ms", str(DEADLINE_MS),
                     "--linger-ms", "500")
        children.cli("comparison", "comparison", "serve", *common, "--export-interval-s", "1",
                     "--metrics-port", str(cmp_port))
        cmp_url = f"http://127.0.0.1:{cmp_port}/metrics"
        a = start_gateway(children, "gateway-a", common, "--comparison-url", cmp_url)
        b = start_gateway(children, "gateway-b", common, "--tls-cert", str(cert), "--tls-key", str(key),
                          "--api-keys-file", str(keys), "--rate-limit", "0.001", "--rate-burst", "3",
                          tls=cert)
        groups = [f"{prefix}model.{m}" for m in (*MODELS, "flaky")]
        groups += [f"{prefix}rendezvous", f"{prefix}comparison"]
        children.wait(lambda: _groups_ready(config, groups), 120, "models, rendezvous and comparison")
        children.wait(lambda: ready(a) and ready(b), 120, "both gateways ready")
        yield Stack(config, topics, prefix, children, a, b, cmp_url, common, tmp)
    finally:
        children.stop_all()


def _groups_ready(config: dict[str, Any], groups: list[str]) -> bool:
    try:
        wait_for_groups(config, groups, timeout=0.5)
        return True
    except Exception:  # noqa: BLE001 - "not yet"
        return False


def expected(model: Any, rows: list[dict[str, float]]) -> tuple[list[float], list[str]]:
    model.load()
    predictions = model.predict(features_to_matrix(rows, DEMO_FEATURES))
    return [p.score for p in predictions], [p.label for p in predictions]


# -- answers --------------------------------------------------------------------------------------


def test_tritonclient_over_http_and_grpc_gets_the_champions_answers(stack: Stack) -> None:
    rows = demo_rows(5, seed=11)
    scores, labels = expected(champion(), rows)
    http = thttp.InferenceServerClient(f"127.0.0.1:{stack.a.http}")
    grpc = tgrpc.InferenceServerClient(f"127.0.0.1:{stack.a.grpc}")
    for client, module, name in ((http, thttp, "http"), (grpc, tgrpc, "grpc")):
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("default")
        result = client.infer("default", oip_inputs(module, rows), request_id=f"triton-{name}-{stack.prefix}")
        # The champion's own scores: equal up to the last bits, which BLAS may round differently for
        # the micro-batch the worker happened to score them in.
        np.testing.assert_allclose(result.as_numpy("score"), scores, rtol=1e-12, atol=0)
        assert [x.decode() if isinstance(x, bytes) else x for x in result.as_numpy("label")] == labels
        assert [x.decode() if isinstance(x, bytes) else x for x in result.as_numpy("status")] == ["OK"] * 5
        response = result.get_response()
        params = response["parameters"] if name == "http" else {
            k: getattr(v, v.WhichOneof("parameter_choice")) for k, v in response.parameters.items()}
        assert params["status"] == "OK" and params["model"] == "champion" and params["schedule_version"] == 1
        assert (response["id"] if name == "http" else response.id) == f"triton-{name}-{stack.prefix}"


def test_model_metadata_lists_the_features_over_http_grpc_and_curl(stack: Stack) -> None:
    http = thttp.InferenceServerClient(f"127.0.0.1:{stack.a.http}")
    grpc = tgrpc.InferenceServerClient(f"127.0.0.1:{stack.a.grpc}")
    # The models publish their contracts as they start; the gateway re-reads them every few seconds.
    wait_until(lambda: bool(http.get_model_metadata("default")["inputs"]), 30, "published model contracts")
    rest = http.get_model_metadata("default")
    assert [i["name"] for i in rest["inputs"]] == list(DEMO_FEATURES)
    assert {i["datatype"] for i in rest["inputs"]} == {"FP64"} and rest["versions"] == ["1"]
    assert [o["name"] for o in rest["outputs"]] == ["score", "label", "status", "model", "version", "reason"]
    meta = grpc.get_model_metadata("default", as_json=True)
    assert [i["name"] for i in meta["inputs"]] == list(DEMO_FEATURES) and meta["platform"] == "rendezvous_schedule"
    status, body = stack.a.get("/v2/models/challenger")
    assert status == 200 and json.loads(body)["platform"] == "rendezvous_model"
    status, body = stack.a.get("/v2")
    assert status == 200 and json.loads(body)["name"] == "rendezvous-serving"
    assert grpc.get_server_metadata().name == "rendezvous-serving"


def test_curl_sends_one_matrix_with_feature_names(stack: Stack) -> None:
    rows = demo_rows(3, seed=12)
    scores, _ = expected(champion(), rows)
    body = {"id": "matrix-1", "inputs": [{
        "name": "features", "datatype": "FP32", "shape": [3, len(DEMO_FEATURES)],
        "parameters": {"feature_names": ",".join(DEMO_FEATURES)},
        "data": [[float(np.float32(r[n])) for n in DEMO_FEATURES] for r in rows]}],
        "outputs": [{"name": "score"}, {"name": "status"}]}
    status, text = curl(stack.a, "POST", "/v2/models/default/infer", json.dumps(body).encode())
    assert status == 200, text
    response = json.loads(text)
    assert [o["name"] for o in response["outputs"]] == ["score", "status"]
    # FP32 inputs: the champion scored the rows as sent (rounded to float32), within that rounding.
    assert np.allclose(response["outputs"][0]["data"], scores, atol=1e-3)
    assert response["id"] == "matrix-1" and response["model_version"] == "1"


def test_a_challenger_asked_directly_answers_with_its_own_scores(stack: Stack) -> None:
    rows = demo_rows(2, seed=13)
    scores, labels = expected(challenger(), rows)
    client = thttp.InferenceServerClient(f"127.0.0.1:{stack.a.http}")
    result = client.infer("challenger", oip_inputs(thttp, rows))
    assert result.as_numpy("score").tolist() == scores
    assert result.as_numpy("label").tolist() == labels
    assert result.get_response()["model_version"] == "forest-1"


# -- every error case, over curl, tritonclient HTTP and tritonclient gRPC -----------------------------

Outcome = tuple[str, str]  # (status: HTTP code or gRPC code name, message)


def rest_call(gateway: Gateway, model: str, body: dict[str, Any], key: str | None = None) -> Outcome:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    status, text = curl(gateway, "POST", f"/v2/models/{model}/infer", json.dumps(body).encode(), headers)
    return str(status), json.loads(text).get("error", "") if status != 200 else ""


def triton_call(module: Any, gateway: Gateway, model: str, rows: list[dict[str, float]], key: str | None = None,
                timeout_us: int | None = None, datatype: str = "FP64") -> Outcome:
    port = gateway.http if module is thttp else gateway.grpc
    kwargs: dict[str, Any] = {}
    if gateway.tls:
        kwargs = ({"ssl": True, "ssl_options": {"ca_certs": str(gateway.tls)}} if module is thttp
                  else {"ssl": True, "root_certificates": str(gateway.tls)})
    client = module.InferenceServerClient(f"127.0.0.1:{port}", **kwargs)
    inputs = oip_inputs(module, rows)
    if datatype != "FP64":
        bad = module.InferInput("mean_radius", [len(rows)], datatype)
        bad.set_data_from_numpy(np.array([b"x"] * len(rows), dtype=np.object_))
        inputs = [bad]
    headers = {"authorization": f"Bearer {key}"} if key else None  # gRPC metadata keys are lowercase
    try:
        client.infer(model, inputs, headers=headers, timeout=timeout_us)
        return "200" if module is thttp else "OK", ""
    except InferenceServerException as err:
        status = str(err.status()).removeprefix("StatusCode.")
        return status, err.message() or ""


def rows_body(rows: list[dict[str, float]], **extra: Any) -> dict[str, Any]:
    return {"inputs": [{"name": n, "datatype": "FP64", "shape": [len(rows)], "data": [r[n] for r in rows]}
                       for n in DEMO_FEATURES], **extra}


def expect(outcomes: dict[str, Outcome], statuses: dict[str, str], message: str) -> None:
    for client, (status, text) in outcomes.items():
        assert status == statuses[client], f"{client}: {status} {text}"
        assert message in text, f"{client}: {text!r} lacks {message!r}"


REST_ONLY = {"curl": "400", "http": "400", "grpc": "INVALID_ARGUMENT"}


def test_a_value_outside_a_published_range_is_400_before_it_reaches_kafka(stack: Stack) -> None:
    """A model published with a range (here one no worker serves: the 400 comes before Kafka)."""
    from confluent_kafka import Producer

    from services.core.model_info import ModelInfo, encode_model_info
    from services.core.signatures import FeatureSpec, Signature

    ranged = Signature(tuple(FeatureSpec(n, maximum=28.11 if n == "mean_radius" else None) for n in DEMO_FEATURES))
    producer = Producer(stack.config)
    producer.produce(stack.topics.models, encode_model_info(ModelInfo("ranged", "r-1", ranged)), key=b"ranged")
    assert producer.flush(15) == 0
    rows = demo_rows(2, seed=16)
    rows[1]["mean_radius"] = 1e6
    wait_until(lambda: rest_call(stack.a, "ranged", rows_body(rows))[0] != "404", 30, "the ranged contract read")
    expect({"curl": rest_call(stack.a, "ranged", rows_body(rows)),
            "http": triton_call(thttp, stack.a, "ranged", rows), "grpc": triton_call(tgrpc, stack.a, "ranged", rows)},
           REST_ONLY, "input 'mean_radius' row 1: 1000000.0 is above its maximum 28.11 for 'ranged' "
           "(outside the range its contract declares)")


def test_unknown_model_is_404_not_found(stack: Stack) -> None:
    rows = demo_rows(1, seed=14)
    expect({"curl": rest_call(stack.a, "nope", rows_body(rows)),
            "http": triton_call(thttp, stack.a, "nope", rows), "grpc": triton_call(tgrpc, stack.a, "nope", rows)},
           {"curl": "404", "http": "404", "grpc": "NOT_FOUND"}, "unknown model 'nope'; this gateway serves: default")


def test_malformed_input_is_400_invalid_argument_naming_the_problem(stack: Stack) -> None:
    rows = demo_rows(1, seed=15)
    expect({"curl": rest_call(stack.a, "default", {"inputs": [{"name": "mean_radius", "datatype": "BYTES",
                                                               "shape": [1], "data": ["x"]}]}),
            "http": triton_call(thttp, stack.a, "default", rows, datatype="BYTES"),
            "grpc": triton_call(tgrpc, stack.a, "default", rows, datatype="BYTES")},
           REST_ONLY, "input 'mean_radius': datatype BYTES is not a number type")
    ragged = rows_body(rows)
    ragged["inputs"][3]["shape"] = [2]
    status, text = rest_call(stack.a, "default", ragged)
    assert (status, text) == ("400", "input 'mean_area': 1 values for shape [2] (2 expected)")
    # Any feature the preferred model requires, not only its first: without one, the models failed on
    # it and a fallback answered 200.
    partial = rows_body(rows)
    partial["inputs"] = [i for i in partial["inputs"] if i["name"] != "mean_texture"]
    status, text = rest_call(stack.a, "default", partial)
    assert (status, text) == ("400", "missing required feature(s) 'mean_texture' for 'default'")
    status, text = curl(stack.a, "POST", "/v2/models/default/infer", b"{oops")
    assert status == 400 and "the body is not valid JSON" in json.loads(text)["error"]
    # The headers are read before the body: it was parsed first, and refused for its data (a review).
    invalid = json.dumps({"inputs": [{"name": "mean_radius", "datatype": "BYTES", "shape": [1], "data": ["x"]}]})
    status, text = curl(stack.a, "POST", "/v2/models/default/infer", invalid.encode(), {"X-Timeout-Ms": "soon"})
    assert status == 400 and "X-Timeout-Ms must be a positive whole number" in json.loads(text)["error"], text


def test_a_body_of_a_type_any_web_page_may_send_cross_site_is_415_counted(stack: Stack) -> None:
    """text/plain and forms: any page may POST them to another site without the CORS consent the
    gateway never gives. They were read as JSON, so a page a user visited could make calls to a
    gateway running without API keys on their machine or network."""
    body = json.dumps(rows_body(demo_rows(1, seed=16))).encode()
    counted = ("rdv_gateway_rejected_total", (("protocol", "rest"), ("reason", "media_type")))
    before = stack.a.metrics().get(counted, 0)
    for kind in ("text/plain", "application/x-www-form-urlencoded", "Multipart/Form-Data; boundary=x"):
        status, text = curl(stack.a, "POST", "/v2/models/default/infer", body, content_type=kind)
        assert status == 415 and "send the body as application/json" in json.loads(text)["error"], (kind, text)
    assert stack.a.metrics().get(counted, 0) == before + 3
    labelled = "application/json; charset=utf-8"
    status, text = curl(stack.a, "POST", "/v2/models/default/infer", body, content_type=labelled)
    assert status == 200, text
    # A page's Blob goes with no Content-Type at all, and needs no consent either: its Origin says it.
    refused = ("rdv_gateway_rejected_total", (("protocol", "rest"), ("reason", "cross_origin")))
    before = stack.a.metrics().get(refused, 0)
    status, text = curl(stack.a, "POST", "/v2/models/default/infer", body, content_type="",
                        headers={"Origin": "https://evil.example"})
    assert status == 403 and "web page of another origin" in json.loads(text)["error"], text
    assert stack.a.metrics().get(refused, 0) == before + 1


def test_an_unparseable_or_outsized_grpc_call_is_invalid_argument_with_its_reason_counted(stack: Stack) -> None:
    """Garbage bytes were an UNKNOWN status, uncounted, with a traceback logged per call; a call
    naming a 16,000-character input got RESOURCE_EXHAUSTED: its reason, echoing the name, did not
    fit gRPC's trailer."""
    from tritonclient.grpc import service_pb2

    invalid = ("rdv_gateway_rejected_total", (("protocol", "grpc"), ("reason", "invalid")))
    before = stack.a.metrics().get(invalid, 0)
    with grpc.insecure_channel(f"127.0.0.1:{stack.a.grpc}") as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")  # bytes as they are
        with pytest.raises(grpc.RpcError) as garbage:
            infer(b"\xff\xff\xff\xff not a message", timeout=30)
        tensor = service_pb2.ModelInferRequest.InferInputTensor(
            name="x" * 16_000, datatype="FP64", shape=[1],
            contents=service_pb2.InferTensorContents(fp64_contents=[1.0]))
        long_name = service_pb2.ModelInferRequest(model_name="default", inputs=[tensor])
        with pytest.raises(grpc.RpcError) as named:
            infer(long_name.SerializeToString(), timeout=30)
        # REST refuses a parameter that is null; gRPC took one with no value set (a review).
        valueless = service_pb2.ModelInferRequest(model_name="default", inputs=[
            service_pb2.ModelInferRequest.InferInputTensor(name="mean_radius", datatype="FP64", shape=[1],
                                                           contents=service_pb2.InferTensorContents(fp64_contents=[1.0]))])
        valueless.parameters["foo"].CopyFrom(service_pb2.InferParameter())
        with pytest.raises(grpc.RpcError) as empty:
            infer(valueless.SerializeToString(), timeout=30)
    assert garbage.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (empty.value.code(), empty.value.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT, "the call: parameter 'foo' has no value (set one of bool_param, "
        "int64_param, string_param, double_param, uint64_param)")
    assert garbage.value.details().startswith("the message is not a valid ModelInferRequest: ")
    assert named.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # Names the field and the limit, without echoing the 16,000 characters back.
    assert named.value.details() == "inputs[0]: 'name' of 16000 characters is over the limit of 256"
    assert stack.a.metrics().get(invalid, 0) == before + 3


def test_grpc_floods_of_parameters_and_long_reasons_are_refused_with_their_reason(stack: Stack) -> None:
    """A message of 560,000 parameters held the event loop 0.45 s while protobuf parsed it; 550,000
    on an output were not looked at, and held (86 MB) while the call waited; a reason echoing 1,000
    emoji did not fit the trailer once percent-encoded: RESOURCE_EXHAUSTED instead (a review)."""
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest
    tensor = request.InferInputTensor(name="mean_radius", datatype="FP64", shape=[1],
                                      contents=service_pb2.InferTensorContents(fp64_contents=[15.0]))
    flood = request(model_name="default", inputs=[tensor])
    for i in range(5_000):  # past the size from which the fields are counted before the parse
        flood.parameters[f"p{i}"].int64_param = i
    output = request.InferRequestedOutputTensor(name="score")
    for i in range(33):
        output.parameters[f"p{i}"].bool_param = True
    crowded = request(model_name="default", inputs=[tensor], outputs=[output])
    emoji = request(model_name="\U0001f600" * 1_000, inputs=[tensor])
    refused = {}
    with grpc.insecure_channel(f"127.0.0.1:{stack.a.grpc}") as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        for name, message in (("flood", flood), ("crowded", crowded), ("emoji", emoji)):
            with pytest.raises(grpc.RpcError) as error:
                infer(message.SerializeToString(), timeout=30)
            refused[name] = (error.value.code(), error.value.details())
    assert refused["flood"] == (grpc.StatusCode.INVALID_ARGUMENT, "the call: more than 32 parameters")
    assert refused["crowded"] == (grpc.StatusCode.INVALID_ARGUMENT, "output 'score': 33 parameters; at most 32")
    code, details = refused["emoji"]
    assert code == grpc.StatusCode.NOT_FOUND and "\U0001f600" in details and details.endswith("..."), details


def test_grpc_data_the_gateway_would_not_read_is_refused_and_garbage_without_a_key_is_401(stack: Stack) -> None:
    """Values in a contents field other than the datatype's were dropped unread and the call
    answered OK without them; on a keyed gateway, a message that did not parse was refused for its
    bytes (INVALID_ARGUMENT, the parser's words) to a caller without a key (REST says 401 first)."""
    from tritonclient.grpc import service_pb2

    contents = service_pb2.InferTensorContents(fp64_contents=[15.0], fp32_contents=[1.0])
    tensor = service_pb2.ModelInferRequest.InferInputTensor(name="mean_radius", datatype="FP64", shape=[1],
                                                            contents=contents)
    mixed = service_pb2.ModelInferRequest(model_name="default", inputs=[tensor]).SerializeToString()
    infer = "/inference.GRPCInferenceService/ModelInfer"
    with grpc.insecure_channel(f"127.0.0.1:{stack.a.grpc}") as channel, pytest.raises(grpc.RpcError) as refused:
        channel.unary_unary(infer)(mixed, timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == "input 'mean_radius': data in fp32_contents; FP64 data comes in fp64_contents"
    assert stack.b.tls is not None
    credentials = grpc.ssl_channel_credentials(stack.b.tls.read_bytes())
    with grpc.secure_channel(f"localhost:{stack.b.grpc}", credentials) as channel, \
            pytest.raises(grpc.RpcError) as garbage:
        channel.unary_unary(infer)(b"\xff\xff\xff", timeout=30)
    assert garbage.value.code() == grpc.StatusCode.UNAUTHENTICATED, garbage.value.details()


def test_a_trailing_or_encoded_slash_is_no_path_of_its_own(stack: Stack) -> None:
    """`/v2/health/ready/` got Starlette's bare 307 to the host the caller's Host header named,
    counted nowhere; `default%2Fversions%2F1` was routed as the model `default`, version 1."""
    no_route = ("rdv_gateway_rejected_total", (("protocol", "rest"), ("reason", "no_route")))
    before = stack.a.metrics().get(no_route, 0)
    status, text = curl(stack.a, "GET", "/v2/health/ready/", headers={"Host": "evil.example"})
    assert (status, json.loads(text)) == (404, {"error": "no such path: /v2/health/ready/"})
    assert stack.a.metrics().get(no_route, 0) == before + 1
    body = json.dumps(rows_body(demo_rows(1, seed=19))).encode()
    status, text = curl(stack.a, "POST", "/v2/models/default%2Fversions%2F1/infer", body)
    assert status == 404 and "a model name holds no '/'" in json.loads(text)["error"], text


def test_timeout_is_504_deadline_exceeded_with_the_reason(stack: Stack) -> None:
    rows = demo_rows(1, seed=16)
    status, text = curl(stack.a, "POST", "/v2/models/default/infer", json.dumps(rows_body(rows)).encode(),
                        {"X-Timeout-Ms": "1"})
    outcomes = {"curl": (str(status), json.loads(text)["error"]),
                "http": triton_call(thttp, stack.a, "default", rows, timeout_us=1000),
                "grpc": triton_call(tgrpc, stack.a, "default", rows, timeout_us=1000)}
    expect(outcomes, {"curl": "504", "http": "504", "grpc": "DEADLINE_EXCEEDED"},
           "TIMEOUT: no usable score by the deadline")


def test_error_is_502_unavailable_when_every_model_of_the_schedule_fails(stack: Stack) -> None:
    """Schedule v2 = [flaky] alone: a row flaky refuses is answered ERROR; then v3 restores v1's models."""
    # Effective 5 s on: the rendezvous (it decides) and the gateway (it names the version) both read
    # it before then, even on a loaded host.
    start = now_ms() + 5000
    publish(stack.config, stack.topics.control, Schedule(models=("flaky",), version=2, effective_at=start,
                                                         default_deadline_ms=DEADLINE_MS))
    rendezvous_log = stack.tmp / "rendezvous.log"
    try:
        stack.children.wait(lambda: '"2"' in stack.a.get("/v2/models/default/versions/2")[1]
                            and "schedule default v2 accepted" in rendezvous_log.read_text(errors="replace")
                            and now_ms() > start + 500, 60, "schedule v2 in force at the gateway and the rendezvous")
        refused = next(r for r in demo_rows(50, seed=17) if flaky_rejects(r))
        accepted = next(r for r in demo_rows(50, seed=17) if not flaky_rejects(r))
        expect({"curl": rest_call(stack.a, "default", rows_body([refused])),
                "http": triton_call(thttp, stack.a, "default", [refused]),
                "grpc": triton_call(tgrpc, stack.a, "default", [refused])},
               {"curl": "502", "http": "502", "grpc": "UNAVAILABLE"}, "ERROR: ")
        status, text = curl(stack.a, "POST", "/v2/models/default/versions/2/infer",
                            json.dumps(rows_body([accepted])).encode())
        assert status == 200 and json.loads(text)["parameters"]["model"] == "flaky", text
        status, text = stack.a.get("/v2/models/default/versions/1")
        assert status == 404 and "is not in force (v2 is)" in text
    finally:
        publish(stack.config, stack.topics.control, Schedule(models=MODELS, version=3,
                                                             effective_at=max(now_ms(), start),
                                                             default_deadline_ms=DEADLINE_MS))
        stack.children.wait(lambda: stack.a.get("/v2/models/default/versions/3")[0] == 200, 60, "schedule v3")


def test_api_keys_401_unauthenticated_and_rate_limit_429_resource_exhausted(stack: Stack) -> None:
    rows = demo_rows(1, seed=18)
    b = stack.b
    for key in (None, "wrong-key"):
        expect({"curl": rest_call(b, "default", rows_body(rows), key),
                "http": triton_call(thttp, b, "default", rows, key),
                "grpc": triton_call(tgrpc, b, "default", rows, key)},
               {"curl": "401", "http": "401", "grpc": "UNAUTHENTICATED"},
               "an API key is required" if key is None else "the API key is not valid")
    # alice: over TLS, with her key, answered (two calls of her burst of 3).
    assert rest_call(b, "default", rows_body(rows), ALICE) == ("200", "")
    assert triton_call(tgrpc, b, "default", rows, ALICE) == ("OK", "")
    # bob: a burst of 3, then refused on every protocol (one bucket per key; 0.001 calls/s refill).
    assert [rest_call(b, "default", rows_body(rows), BOB)[0] for _ in range(3)] == ["200"] * 3
    expect({"curl": rest_call(b, "default", rows_body(rows), BOB),
            "http": triton_call(thttp, b, "default", rows, BOB),
            "grpc": triton_call(tgrpc, b, "default", rows, BOB)},
           {"curl": "429", "http": "429", "grpc": "RESOURCE_EXHAUSTED"}, "over the rate limit")
    log = (stack.tmp / "gateway-b.log").read_text()
    assert ALICE not in log and BOB not in log and "wrong-key" not in log
    rejected = b.metrics()
    assert rejected[("rdv_gateway_rejected_total", (("protocol", "grpc"), ("reason", "rate_limited")))] == 1
    assert rejected[("rdv_gateway_rejected_total", (("protocol", "rest"), ("reason", "unauthenticated")))] == 4


def _replace_keys(file: Path, text: str) -> None:
    """As a Kubernetes Secret mounted as a file changes: the new content whole, at once."""
    staged = file.with_suffix(".staged")
    staged.write_text(text)
    staged.replace(file)


def test_a_key_added_to_or_revoked_from_the_keys_file_counts_without_a_restart(stack: Stack) -> None:
    """Read at start only, a leaked key stayed valid until every gateway was restarted."""
    b, rows, keys = stack.b, demo_rows(1, seed=19), stack.tmp / "keys.txt"
    carol, original = "carol-" + "k" * 40, keys.read_text()
    _replace_keys(keys, f"bob:{hashlib.sha256(BOB.encode()).hexdigest()}\n"
                        f"carol:{hashlib.sha256(carol.encode()).hexdigest()}\n")
    stack.children.wait(lambda: rest_call(b, "default", rows_body(rows), carol)[0] == "200", 60,
                        "carol's key let in")
    assert rest_call(b, "default", rows_body(rows), ALICE) == ("401", "the API key is not valid")
    samples = b.metrics()
    assert samples[("rdv_gateway_api_key_reloads_total", (("result", "applied"),))] == 1
    assert samples[("rdv_gateway_api_keys", ())] == 2
    _replace_keys(keys, "")  # emptied by mistake: refused, the keys in force stay
    stack.children.wait(lambda: b.metrics().get(("rdv_gateway_api_key_reloads_total", (("result", "refused"),))) == 1,
                        60, "the emptied file refused")
    assert rest_call(b, "default", rows_body(rows), carol) == ("200", "")
    log = (stack.tmp / "gateway-b.log").read_text()
    assert "added carol; revoked alice" in log and "holds no key" in log and carol not in log
    _replace_keys(keys, original)  # the module's gateways as the tests after this one expect them
    stack.children.wait(lambda: rest_call(b, "default", rows_body(rows), carol)[0] == "401", 60, "the keys of before")


# -- several gateways, and a restart ------------------------------------------------------------------


def owned(gateway: Gateway) -> int:
    try:
        return int(gateway.metrics()[("rdv_gateway_reply_partitions", ())])
    except (subprocess.CalledProcessError, KeyError):
        return 0


def test_gateways_share_the_reply_partitions_and_a_restart_fails_only_its_calls(stack: Stack) -> None:
    stack.children.wait(lambda: owned(stack.a) + owned(stack.b) == 4 and owned(stack.a) and owned(stack.b),
                        60, "A and B owning the 4 reply partitions between them")
    c = start_gateway(stack.children, "gateway-c", stack.common, "--drain-timeout-s", "0")
    stack.children.wait(lambda: ready(c) and owned(stack.a) + owned(stack.b) + owned(c) == 4, 120,
                        "C ready with a reply partition of its own")
    body = rows_body(demo_rows(1, seed=19))
    calls = 6
    results: list[Outcome] = []

    def call() -> None:
        status, text = curl(c, "POST", "/v2/models/default/infer", json.dumps(body).encode(),
                            {"X-Timeout-Ms": "30000"})
        results.append((str(status), json.loads(text).get("error", "")))

    rendezvous = stack.children.procs["rendezvous"]
    rendezvous.send_signal(signal.SIGSTOP)  # no answers for now: the calls wait at C
    try:
        threads = [threading.Thread(target=call) for _ in range(calls)]
        for thread in threads:
            thread.start()
        stack.children.wait(lambda: c.metrics().get(("rdv_gateway_rows_in_flight", ())) == calls, 30,
                            "every call in flight at C")
        stack.children.procs["gateway-c"].terminate()  # SIGTERM: drain (0 s), fail what waits, leave the group
        for thread in threads:
            thread.join(timeout=60)
    finally:
        rendezvous.send_signal(signal.SIGCONT)
    assert len(results) == calls
    for status, message in results:
        assert status == "503" and "shutting down" in message, (status, message)
    assert stack.children.procs["gateway-c"].wait(timeout=30) == 0
    del stack.children.procs["gateway-c"]
    # Nothing lost on the Kafka side: every request C sent was answered and logged as usual.
    requests = [r for r in read_topic(stack.config, stack.topics.requests, expect=1, decode="request")
                if r["metadata"].get("gateway") == "gateway-c"]
    assert len(requests) == calls
    sent = {r["request_id"] for r in requests}

    def all_answered() -> bool:
        answers = read_topic(stack.config, stack.topics.answers, expect=calls, decode="answer")
        return sent <= {a["request_id"] for a in answers}

    stack.children.wait(all_answered, 60, "every request of C answered on the answers topic")
    # The partitions C owned went back to A and B, which go on answering.
    stack.children.wait(lambda: owned(stack.a) + owned(stack.b) == 4, 120, "A and B owning all 4 again")
    assert rest_call(stack.a, "default", body) == ("200", "")


def test_metrics_count_calls_by_protocol_route_and_status(stack: Stack) -> None:
    samples = stack.a.metrics()
    assert samples[("rdv_gateway_requests_total", (("protocol", "rest"), ("route", "infer"), ("status", "200")))] > 0
    assert samples[("rdv_gateway_requests_total", (("protocol", "grpc"), ("route", "infer"), ("status", "OK")))] > 0
    assert samples[("rdv_gateway_request_seconds_count", (("protocol", "rest"), ("route", "infer"),
                                                          ("status", "504")))] >= 2
    assert samples[("rdv_gateway_rejected_total", (("protocol", "grpc"), ("reason", "not_found")))] >= 1
    assert samples[("rdv_gateway_answers_total", (("status", "OK"), ("target", "schedule")))] > 0


# -- the live comparison page ---------------------------------------------------------------------------


def figures_from_metrics(url: str) -> dict[str, float | None]:
    """What the page must show, computed here from the comparison service's own metrics."""
    with urllib.request.urlopen(url, timeout=5) as response:
        samples = parse_metrics(response.read().decode())

    def values(name: str) -> list[tuple[dict[str, str], float]]:
        return [(dict(labels), v) for (n, labels), v in samples.items() if n == name]

    out: dict[str, float | None] = {}
    for labels, v in values("rdv_cmp_answers_total"):
        out[f"answers-{labels['status']}"] = v
    champions = [labels["model"] for labels, _ in values("rdv_cmp_champion_info")]
    models = {labels["model"] for name in ("rdv_cmp_window_outputs", "rdv_cmp_deadline_total",
                                           "rdv_cmp_latency_seconds") for labels, _ in values(name)}
    for model in models:
        for q in ("0.5", "0.9", "0.99"):
            found = [v for labels, v in values("rdv_cmp_latency_seconds") if labels == {"model": model, "quantile": q}]
            out[f"lat-{model}-{q}"] = found[0] if found else None
        if model not in champions:
            agree = [v for labels, v in values("rdv_cmp_agreement_ratio") if labels["model"] == model]
            ks = [v for labels, v in values("rdv_cmp_score_ks")
                  if labels["model"] == model and labels["reference"] == "champion"]
            out[f"agree-{model}"] = agree[0] if agree else None
            out[f"ks-{model}"] = ks[0] if ks else None
        deadline = {labels["outcome"]: v for labels, v in values("rdv_cmp_deadline_total") if labels["model"] == model}
        total = deadline.get("met", 0.0) + deadline.get("missed", 0.0)
        out[f"deadline-{model}"] = deadline.get("met", 0.0) / total if total else None
        outputs = [v for labels, v in values("rdv_cmp_window_outputs") if labels["model"] == model]
        out[f"outputs-{model}"] = outputs[0] if outputs else 0.0
    return out


def figures_on_page(page: Any) -> dict[str, float | None]:
    shown = page.eval_on_selector_all("[data-testid]", "els => els.map(e => [e.dataset.testid, e.dataset.value])")
    return {testid: (float(value) if value else None) for testid, value in shown}


def test_the_page_shows_the_comparison_services_figures_in_a_real_browser(stack: Stack, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    for seed in range(4):  # some traffic of its own, with v3 in force
        assert rest_call(stack.a, "default", rows_body(demo_rows(10, seed=100 + seed))) == ("200", "")
    origin = stack.a.url
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=shutil.which("chromium") or "/usr/bin/chromium", headless=True,
            args=["--no-sandbox", "--disable-background-networking"])
        try:
            page = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=1)
            requested: list[str] = []
            page.on("request", lambda request: requested.append(request.url))
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.goto(f"{origin}/ui")
            last: dict[str, Any] = {}

            def same_as_the_comparison_service() -> bool:
                last["page"], last["metrics"] = figures_on_page(page), figures_from_metrics(stack.comparison_metrics)
                return bool(last["metrics"]) and last["page"] == last["metrics"]

            try:
                stack.children.wait(same_as_the_comparison_service, 60, "the page showing the metrics' figures")
            except AssertionError:
                problem = page.inner_text("#problem")
                problem += f"; {page.get_attribute('body', 'data-snapshots')} snapshots received; the gateway has "
                problem += curl(stack.a, "GET", "/ui/snapshot")[1][:300]
                raise AssertionError(f"page {last.get('page')} != metrics {last.get('metrics')}; page says "
                                     f"{problem!r}; errors {errors}") from None
            figures = last["page"]
            assert figures["answers-OK"] and figures["lat-champion-0.5"] and figures["agree-challenger"] is not None
            # The text is the value for people: ms with one decimal, shares in %.
            text = page.inner_text('[data-testid="lat-champion-0.5"]')
            assert abs(float(text.removesuffix(" ms")) - figures["lat-champion-0.5"] * 1000) <= 0.051
            # Readable on a phone: no sideways scrolling at 390 px, figures at a legible size.
            assert page.evaluate("document.scrollingElement.scrollWidth") <= 390
            size = page.eval_on_selector('[data-testid="answers-OK"]', "e => parseFloat(getComputedStyle(e).fontSize)")
            assert size >= 14
            shot = tmp_path / "gateway-ui.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"screenshot: {shot}")
            assert shot.stat().st_size > 10_000
        finally:
            browser.close()
    assert requested and all(url.startswith(origin + "/") for url in requested), requested
    assert not errors, errors


def test_readiness_and_liveness_conventions(stack: Stack) -> None:
    assert stack.a.get("/healthz") == (200, "ok\n")
    status, reason = stack.a.get("/readyz")
    assert status == 200 and reason.startswith("ready: reply partitions")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{stack.a.url}/v2/nothing-here", timeout=5)
    assert err.value.code == 404 and json.loads(err.value.read()) == {"error": "no such path: /v2/nothing-here"}
    status, text = curl(stack.a, "DELETE", "/v2/models/default/infer")
    assert status == 405 and json.loads(text)["error"].startswith("method DELETE not allowed here")

    # Its start logged one librdkafka warning, about its own settings: a producer's given to a reader.
    assert "producer property and will be ignored" not in (stack.tmp / "gateway-a.log").read_text()
