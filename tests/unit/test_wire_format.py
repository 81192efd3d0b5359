"""Schema-registry framing beside single-object encoding (codec level, no registry needed),
and the CloudEvents headers. The registry round trip itself: tests/integration/test_schema_registry.py."""

from __future__ import annotations

import copy
import io
import json
import socketserver
import threading
from typing import Any

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.core import wire
from services.core.cloudevents import EventHeaders
from services.core.codec import CODEC_NAMES, MAGIC, Codec, codec
from services.core.errors import BadInput, ConfigError, DecodeFailed, LookupsSpent, UnknownFingerprint
from services.core.id_lookup import Access, IdLookup, LoopWaits, loop_patience
from services.core.registry import MAX_REPLY_BYTES, Outage, RegistryError, SchemaRegistry
from services.core.settings import KafkaSettings
from tests.integration.harness import wait_until
from tests.unit.test_codec import REQUEST


def fresh(older: list[dict[str, Any]] | None = None) -> Codec:
    """A codec of its own: the shared ones (`codec(name)`) must keep the default framing."""
    return Codec(codec("request").schema, older or [])


def test_registry_framing_is_magic_zero_big_endian_id_then_the_plain_body() -> None:
    writer = fresh()
    writer.write_registry_id(0x01020304)
    data = writer.encode(REQUEST)
    assert data[:5] == b"\x00\x01\x02\x03\x04"
    body = fastavro.schemaless_reader(io.BytesIO(data[5:]), fastavro.parse_schema(writer.schema))
    assert body["request_id"] == REQUEST["request_id"]
    assert data[5:] == codec("request").encode(REQUEST)[10:]


def test_both_framings_are_read_whatever_is_written() -> None:
    reader = fresh()
    reader.write_registry_id(7)
    assert reader.decode(reader.encode(REQUEST)) == REQUEST
    assert reader.decode(codec("request").encode(REQUEST)) == REQUEST
    assert reader.header[:1] == b"\x00" and codec("request").header[:2] == MAGIC


def test_an_unseen_id_is_looked_up_once_and_matched_by_fingerprint() -> None:
    asked: list[int] = []
    reader = fresh()

    def lookup(schema_id: int) -> dict[str, Any]:
        asked.append(schema_id)
        # What a registry gives back: the same schema, formatted and documented differently.
        schema = copy.deepcopy(codec("request").schema)
        schema["doc"] = "registered by someone else"
        return schema

    reader.read_registry_ids(lookup)
    data = b"\x00" + (42).to_bytes(4, "big") + codec("request").encode(REQUEST)[10:]
    assert reader.decode(data) == REQUEST
    assert reader.decode(data) == REQUEST
    assert asked == [42]


def test_an_older_version_by_id_is_resolved_to_the_current_schema() -> None:
    current = copy.deepcopy(codec("request").schema)
    current["fields"].append({"name": "priority", "type": "int", "default": 5})
    old = codec("request").schema
    reader = Codec(current, [old])
    reader.read_registry_ids(lambda _id: old)
    decoded = reader.decode(b"\x00\x00\x00\x00\x09" + codec("request").encode(REQUEST)[10:])
    assert decoded["priority"] == 5 and decoded["request_id"] == REQUEST["request_id"]


def test_an_id_naming_a_schema_we_do_not_know_is_bad_input() -> None:
    reader = fresh()
    reader.read_registry_ids(lambda _id: {"type": "record", "name": "Other", "fields": []})
    with pytest.raises(UnknownFingerprint, match="schema id 3 is not a known version of Request"):
        reader.decode(b"\x00\x00\x00\x00\x03" + codec("request").encode(REQUEST)[10:])


def test_an_id_naming_an_invalid_schema_is_bad_input() -> None:
    reader = fresh()
    reader.read_registry_ids(lambda _id: {"type": "record", "name": "Broken", "fields": [{"name": "x"}]})
    with pytest.raises(DecodeFailed, match="schema id 4 is not a valid Avro schema"):
        reader.decode(b"\x00\x00\x00\x00\x04\x00")


def test_registry_framing_without_a_registry_says_so() -> None:
    with pytest.raises(DecodeFailed, match="no --schema-registry is configured"):
        fresh().decode(b"\x00\x00\x00\x00\x05" + codec("request").encode(REQUEST)[10:])


@pytest.mark.parametrize("data", [b"\x00", b"\x00\x00\x00\x00", b"\x01\x00\x00\x00\x05abc", b"\xc3\x02" + b"\x00" * 9])
def test_other_first_bytes_are_neither_framing(data: bytes) -> None:
    with pytest.raises(DecodeFailed, match="neither single-object"):
        fresh().decode(data)


def test_an_id_outside_four_bytes_is_refused() -> None:
    with pytest.raises(ConfigError, match="does not fit"):
        fresh().write_registry_id(2**32)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"wire_format": "protobuf"}, "--wire-format must be one of single-object, registry"),
        ({"wire_format": "registry"}, "--wire-format registry needs --schema-registry URL"),
        ({"schema_registry": "localhost:8081"}, "must be an http"),
    ],
)
def test_wire_settings_are_checked_in_one_line(changes: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        wire.configure(KafkaSettings(**changes))


def test_every_topic_role_names_a_record_with_a_codec() -> None:
    from services.core.settings import TOPIC_ROLES

    assert set(wire.ROLE_RECORDS) == set(TOPIC_ROLES)
    for name in set(wire.ROLE_RECORDS.values()):
        assert codec(name).full_name.startswith("io.rendezvous.")


def test_cloudevents_headers_carry_the_required_attributes() -> None:
    headers = dict(EventHeaders("Answer", "rdv.answers").for_id("r-1"))
    assert headers == {
        "ce_id": b"r-1", "ce_specversion": b"1.0", "ce_type": b"io.rendezvous.Answer",
        "ce_source": b"/rendezvous/rdv.answers", "content-type": b"application/avro",
    }


@given(st.binary(max_size=300), st.sampled_from(["ours", "other", "broken", "refused"]))
@settings(max_examples=300, deadline=None)
def test_any_registry_framed_bytes_decode_to_a_record_or_bad_input(body: bytes, answer: str) -> None:
    """Whatever the bytes after `00 + id`, and whatever the registry says the id is."""
    schemas = {
        "ours": codec("request").schema,
        "other": {"type": "record", "name": "Other", "fields": [{"name": "x", "type": "long"}]},
        "broken": {"type": "record", "name": "Broken", "fields": [{"name": "x"}]},
    }

    def lookup(_schema_id: int) -> dict[str, Any]:
        if answer == "refused":
            raise DecodeFailed("schema id: HTTP 404")
        return schemas[answer]

    reader = fresh()
    reader.read_registry_ids(lookup)
    try:
        record = reader.decode(b"\x00\x00\x00\x01\x00" + body)
    except BadInput:
        return
    assert answer == "ours" and isinstance(record, dict)


def test_an_id_refused_once_is_not_looked_up_again() -> None:
    asked: list[int] = []

    def lookup(schema_id: int) -> dict[str, Any]:
        asked.append(schema_id)
        return {"type": "record", "name": "Other", "fields": []}

    reader = fresh()
    reader.read_registry_ids(lookup)
    for _ in range(3):
        with pytest.raises(UnknownFingerprint, match="schema id 8 is not a known version"):
            reader.decode(b"\x00\x00\x00\x00\x08\x00")
    assert asked == [8]


def test_the_registrys_not_found_for_an_id_is_asked_again_after_a_while(monkeypatch: pytest.MonkeyPatch) -> None:
    """A registry replica not caught up with a schema registered a moment earlier says "not found":
    remembered for good, every later record of that id was dead-lettered until a restart (a review)."""
    from services.core import codec as codec_module

    clock = [1000.0]
    monkeypatch.setattr(codec_module.time, "monotonic", lambda: clock[0])
    registered = [False]

    def lookup(schema_id: int) -> dict[str, Any]:
        if not registered[0]:
            refused = DecodeFailed(f"schema id {schema_id}: HTTP 404 Schema not found")
            refused.not_found = True  # as IdLookup marks the registry's own "not found"
            raise refused
        return codec("request").schema

    reader = fresh()
    reader.read_registry_ids(lookup)
    framed = b"\x00\x00\x00\x00\x2a" + codec("request").encode(REQUEST)[10:]
    with pytest.raises(DecodeFailed, match="404"):
        reader.decode(framed)
    registered[0] = True
    with pytest.raises(DecodeFailed, match="404"):
        reader.decode(framed)  # within the minute: the verdict stands, not asked again
    clock[0] += codec_module.NOT_FOUND_FOR_S
    assert reader.decode(framed)["request_id"] == REQUEST["request_id"]


def test_a_schema_nobody_can_read_stays_refused_and_old_not_founds_are_asked_again_a_few_a_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The registry's 'unusable' (a Protobuf schema) was asked again every minute like a 'not
    found'; and 20 ids refused a minute before, asked again out of the lookups of the second, had
    a valid new id dead-lettered, not looked up (a review)."""
    from services.core import codec as codec_module

    clock = [1000.0]
    monkeypatch.setattr(codec_module.time, "monotonic", lambda: clock[0])
    asked: list[int] = []

    def lookup(schema_id: int) -> dict[str, Any]:
        asked.append(schema_id)
        refused = DecodeFailed(f"schema id {schema_id}: HTTP 404")
        refused.not_found = schema_id != 7  # id 7: unusable, as the registry's 422
        raise refused

    reader = fresh()
    reader._reasks.clock = lambda: clock[0]
    reader.read_registry_ids(lookup)
    body = codec("request").encode(REQUEST)[10:]
    for schema_id in range(7, 30):
        with pytest.raises(DecodeFailed):
            reader.decode(b"\x00" + schema_id.to_bytes(4, "big") + body)
    clock[0] += codec_module.NOT_FOUND_FOR_S
    asked.clear()
    for schema_id in range(7, 30):
        with pytest.raises(DecodeFailed):
            reader.decode(b"\x00" + schema_id.to_bytes(4, "big") + body)
    assert 7 not in asked and len(asked) == codec_module.REASKS_PER_S  # in one second


def test_registry_credentials_in_the_url_go_into_a_header_and_never_into_a_message() -> None:
    """urllib took user:password@ for part of the host (a registry that asks for them could not be
    used) and every message quoted the URL with the password (a security review)."""
    import base64

    from services.core.registry import RegistryError, SchemaRegistry, _without_credentials

    url, auth = _without_credentials("http://reg%40user:S3cret%2Fpw@127.0.0.1:9/ccompat")
    assert url == "http://127.0.0.1:9/ccompat"
    assert base64.b64decode(auth.removeprefix("Basic ")) == b"reg@user:S3cret/pw"
    assert _without_credentials("https://registry:8081") == ("https://registry:8081", "")
    registry = SchemaRegistry("http://reguser:RegS3cretPw@127.0.0.1:9/", timeout_s=2)
    with pytest.raises(RegistryError) as refused:  # nothing listens on port 9: a real refusal
        registry.schema(1)
    assert "RegS3cretPw" not in str(refused.value) and "schema registry http://127.0.0.1:9 unreachable" in str(
        refused.value)
    with pytest.raises(ConfigError) as schemeless:  # no scheme, so no parse of the credentials
        SchemaRegistry("reguser:RegS3cretPw@registry:8081")
    assert "RegS3cretPw" not in str(schemeless.value) and "***@registry:8081" in str(schemeless.value)


@pytest.mark.parametrize("answer", [b"[]", b"null", b'"x"', b"7"])
def test_a_registry_answer_that_is_no_json_object_is_a_registry_error(answer: bytes) -> None:
    """Read as a dict, it raised AttributeError, which no decoder counts as bad input: the worker
    stopped, and stopped again on the same request after each restart."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from services.core.registry import RegistryError, SchemaRegistry

    class NotARegistry(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *_args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), NotARegistry)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(RegistryError, match="answered schema id 7 with no JSON object"):
            SchemaRegistry(f"http://127.0.0.1:{server.server_port}").schema(7)
    finally:
        server.shutdown()
        server.server_close()


class RawReplies(socketserver.ThreadingTCPServer):
    """A server that answers every connection with the next of `replies`, bytes as given, each
    chunk after `pause_s` (a registry, a proxy or something else at the registry's address)."""

    daemon_threads = True

    def __init__(self, *replies: list[bytes], pause_s: float = 0.0):
        self.replies, self.pause_s, self.stopping = list(replies), pause_s, threading.Event()
        self.sent = 0  # chunks written
        self.asked: list[str] = []  # each request's path
        self.gate = threading.Event()  # cleared: no answer goes out until it is set again
        self.gate.set()
        super().__init__(("127.0.0.1", 0), _Raw)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> RawReplies:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stopping.set()
        self.gate.set()  # a handler held at the gate ends too
        self.shutdown()
        self.server_close()


class _Raw(socketserver.StreamRequestHandler):
    server: RawReplies

    def handle(self) -> None:
        self.server.asked.append(self.rfile.readline().split()[1].decode())  # the request line is enough to answer
        self.server.gate.wait()
        for chunk in self.server.replies.pop(0) if self.server.replies else []:
            if self.server.stopping.wait(self.server.pause_s):
                return
            try:
                self.wfile.write(chunk)
                self.wfile.flush()
            except OSError:
                return
            self.server.sent += 1


def http_reply(body: bytes, status: str = "200 OK", length: int | None = None) -> list[bytes]:
    size = len(body) if length is None else length
    head = f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {size}\r\nConnection: close"
    return [f"{head}\r\n\r\n".encode() + body]


@pytest.mark.parametrize(("reply", "why"), [
    (http_reply(b'{"schema": "', length=1000), r"/schemas/ids/7: the answer was cut short \(988 bytes missing\)"),
    ([b"SSH-2.0-OpenSSH_9.6\r\n"], "unreachable"),  # not HTTP at all
    (http_reply(b"[" * 100_000), r"the answer \(application/json\) is not JSON"),  # nested past the parser's stack
    # A web server's page at that address: it was said "unreachable" (the misconfiguration probe).
    ([b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 15\r\nConnection: close\r\n\r\n"
      b"<html>hi</html>"], r"/schemas/ids/7: the answer \(text/html\) is not JSON; is the URL the registry's\?"),
    (http_reply(b"", status="204 No Content"), r"an empty answer \(HTTP 204\) is not JSON"),
    # Chunked, and cut short in a chunk: it said "unreachable: IncompleteRead(0 bytes read)".
    ([b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close"
      b"\r\n\r\n100\r\n{\"schema\""], r"/schemas/ids/7: the answer was cut short$"),
    (http_reply(b" " * (MAX_REPLY_BYTES + 1)), r"/schemas/ids/7: the answer is larger than 4 MiB$"),
    # A folded header: its line break was put into the one-line error as sent.
    ([b"HTTP/1.1 200 OK\r\nContent-Type: text/html;\r\n charset=utf-8\r\nContent-Length: 3\r\nConnection: close"
      b"\r\n\r\n<p>"], r"the answer \(text/html\) is not JSON"),
    (http_reply(json.dumps({"schema": "[" * 100_000}).encode()), "is not valid JSON"),
])  # fmt: skip
def test_a_registry_reply_no_registry_would_give_is_a_registry_error_not_a_crash(reply: list[bytes], why: str) -> None:
    """Each escaped as http.client's or the JSON parser's own exception, which no decoder counts
    as bad input: the model worker stopped on the record, and again after every restart (a review)."""
    with RawReplies(reply) as server, pytest.raises(RegistryError, match=why):
        SchemaRegistry(server.url, timeout_s=5).schema(7)


def test_a_reply_trickled_byte_by_byte_ends_the_call_by_its_timeout() -> None:
    """The timeout bounded each wait on the socket, not the call: a reply of a byte every 0.2 s took
    as long as it liked, the poll loop waiting on it (a review measured 12 s for a 1 s timeout)."""
    body = json.dumps({"schema": json.dumps(codec("request").schema)}).encode()
    chunks = [http_reply(b"", length=len(body))[0], *(body[i:i + 1] for i in range(len(body)))]
    with RawReplies(chunks, pause_s=0.2) as server, pytest.raises(RegistryError, match="took longer than the timeout"):
        SchemaRegistry(server.url, timeout_s=1).schema(7)


@pytest.mark.parametrize("status", ["429 Too Many Requests", "401 Unauthorized", "503 Service Unavailable"])
def test_an_id_the_registry_would_not_look_up_for_now_is_asked_again_not_refused(status: str) -> None:
    """A 429 (or 401 / 403 / 408) was taken for the id's fault: remembered as refused, so every
    later record with that id was dead-lettered until the process restarted (a review)."""
    schema = json.dumps({"schema": json.dumps(codec("request").schema)}).encode()
    with RawReplies(http_reply(b'{"message": "not now"}', status=status), http_reply(schema)) as server:
        lookup = IdLookup(SchemaRegistry(server.url, timeout_s=5))
        lookup._outage = Outage(quiet_s=0.0)  # asked again at once, here
        reader = fresh()
        reader.read_registry_ids(lookup)
        framed = b"\x00\x00\x00\x00\x07" + codec("request").encode(REQUEST)[10:]
        with pytest.raises(DecodeFailed) as first:
            reader.decode(framed)
        assert first.value.retriable  # to be tried again, and not refused:
        assert reader.decode(framed)["request_id"] == REQUEST["request_id"]


FORBIDDEN = http_reply(b'{"error_code": 40301, "message": "User is denied operation Read on Subject"}',
                      status="403 Forbidden")
SCHEMA = http_reply(json.dumps({"schema": json.dumps(codec("request").schema)}).encode())


def framed(schema_id: int) -> bytes:
    return b"\x00" + schema_id.to_bytes(4, "big") + codec("request").encode(REQUEST)[10:]


@pytest.mark.parametrize(("read_before", "probe"), [(True, "/schemas/ids/9"), (False, "/subjects")])
def test_a_403_for_one_id_while_the_registry_gives_us_others_is_the_ids_not_a_wait(
    read_before: bool, probe: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A registry checking access per subject answers 403 for a schema this service may not read:
    taken for the registry refusing us for now, one record framed with such an id (ids are small
    integers, easy to guess) held its partition, and everything behind it, until access was granted
    (a review). The registry is asked for what it gave before (an id read, else the subjects); the
    id is refused for a while, as a "not found" is, then asked again."""
    from services.core import codec as codec_module

    clock = [1000.0]
    monkeypatch.setattr(codec_module.time, "monotonic", lambda: clock[0])
    replies = [SCHEMA] if read_before else []
    subjects = http_reply(b'["rdv.requests-value"]')
    with RawReplies(*replies, FORBIDDEN, SCHEMA if read_before else subjects, SCHEMA) as server:
        reader = fresh()
        reader.read_registry_ids(IdLookup(SchemaRegistry(server.url, timeout_s=5)))
        if read_before:
            assert reader.decode(framed(9))["request_id"] == REQUEST["request_id"]
        assert reader.unresolved(framed(7)) is None  # left to the handler: not held
        with pytest.raises(DecodeFailed, match=r"schema id 7: .*HTTP 403.*not this one") as refused:
            reader.decode(framed(7))
        assert not refused.value.retriable
        assert server.asked[-2:] == ["/schemas/ids/7", probe]
        clock[0] += codec_module.NOT_FOUND_FOR_S  # access granted meanwhile
        assert reader.decode(framed(7))["request_id"] == REQUEST["request_id"]


DOWN = http_reply(b'{"message": "down"}', status="503 Service Unavailable")


@pytest.mark.parametrize("probe_answer", [FORBIDDEN, DOWN])
def test_a_403_while_the_registry_refuses_us_everything_still_waits(probe_answer: list[bytes]) -> None:
    """Credentials refused for all (rotated, a proxy): a record is no more at fault than its
    neighbours, and waits for the registry rather than being dead-lettered."""
    with RawReplies(SCHEMA, FORBIDDEN, probe_answer) as server:
        reader = fresh()
        reader.read_registry_ids(IdLookup(SchemaRegistry(server.url, timeout_s=5)))
        reader.decode(framed(9))
        with pytest.raises(DecodeFailed, match="HTTP 403") as held:
            reader.decode(framed(7))
        assert held.value.retriable
        assert server.asked == ["/schemas/ids/9", "/schemas/ids/7", "/schemas/ids/9"]


def test_the_403_probes_verdict_stands_a_while_so_a_flood_of_forbidden_ids_asks_once() -> None:
    access = Access(quiet_s=60)
    with RawReplies(SCHEMA, FORBIDDEN, SCHEMA, FORBIDDEN, FORBIDDEN) as server:
        reader = fresh()
        reader.read_registry_ids(IdLookup(SchemaRegistry(server.url, timeout_s=5), access=access))
        reader.decode(framed(9))
        for forbidden in (7, 8, 10):
            with pytest.raises(DecodeFailed, match="not this one"):
                reader.decode(framed(forbidden))
        assert server.asked == ["/schemas/ids/9", "/schemas/ids/7", "/schemas/ids/9", "/schemas/ids/8",
                                "/schemas/ids/10"]


def test_a_poll_loop_waits_for_the_registry_within_its_patience_and_its_record_waits_for_the_answer() -> None:
    """A lookup held the poll loop, every partition of it, until the registry answered (up to its
    timeout, 6 s): a registry slow to answer stalled the whole service at each new id (a review)."""
    with RawReplies(SCHEMA) as server:
        server.gate.clear()  # the registry does not answer yet
        reader = fresh()
        reader.read_registry_ids(IdLookup(SchemaRegistry(server.url, timeout_s=5)))
        with loop_patience(LoopWaits(per_second_s=0.05)):
            assert "has not answered yet" in (reader.unresolved(framed(7)) or "")  # waits: held, retried
            server.gate.set()
            wait_until(lambda: reader.unresolved(framed(7)) is None, 10, "the answer")  # the same call's answer
        assert reader.decode(framed(7))["request_id"] == REQUEST["request_id"]
        assert server.asked == ["/schemas/ids/7"]  # asked once


def test_a_flood_of_unseen_ids_on_a_slow_registry_costs_the_loop_one_wait_not_one_per_record() -> None:
    with RawReplies(SCHEMA) as server:
        server.gate.clear()
        reader = fresh()
        reader.read_registry_ids(IdLookup(SchemaRegistry(server.url, timeout_s=5)))
        patience = LoopWaits(per_second_s=0.05, clock=lambda: 0.0)  # one second, however long the test takes
        with loop_patience(patience):
            reasons = [reader.unresolved(framed(schema_id)) for schema_id in range(100, 120)]
        assert all(reason is not None for reason in reasons)  # every one waits; none dead-lettered
        assert sum("still answering an earlier lookup" in (r or "") for r in reasons) == 19
        assert patience.left() == 0  # the one wait spent the loop's patience, and no other waited
        assert server.asked == ["/schemas/ids/100"]


NOT_FOUND = http_reply(b'{"error_code": 40403, "message": "Schema not found"}', status="404 Not Found")


def test_an_id_turned_away_while_a_call_was_out_gets_the_next_call_before_ids_asked_after_it() -> None:
    """Each turn the partition read first took the free call: a valid new id behind records with
    made-up ids (any client may write requests) waited for good (a review)."""
    with RawReplies(NOT_FOUND, SCHEMA) as server:
        server.gate.clear()
        reader = fresh()
        reader.read_registry_ids(IdLookup(SchemaRegistry(server.url, timeout_s=5)))
        with loop_patience(LoopWaits(per_second_s=0.0)):
            assert reader.unresolved(framed(1000)) is not None  # a made-up id takes the call
            assert "still answering" in (reader.unresolved(framed(7)) or "")  # the valid one waits its turn
            server.gate.set()
            # The made-up ids' partition is read first again: once the call is back, 7 has it.
            wait_until(lambda: "asked for before it" in (reader.unresolved(framed(1001)) or ""), 10, "7's turn")
            wait_until(lambda: reader.unresolved(framed(7)) is None, 10, "7's answer")
        assert reader.decode(framed(7))["request_id"] == REQUEST["request_id"]
        assert server.asked == ["/schemas/ids/1000", "/schemas/ids/7"]
        with pytest.raises(DecodeFailed, match="404"):  # its answer was kept for it, not asked again
            reader.decode(framed(1000))
        assert len(server.asked) == 2


def test_a_403_whose_question_outlasts_the_loops_patience_is_answered_when_it_comes() -> None:
    """The question's answer came after the loop's patience and was thrown away: the 403 was taken
    for the registry's refusal of everything, the record held for good, and every record type's
    new ids waited out an outage each time (a review)."""
    with RawReplies(SCHEMA, FORBIDDEN, SCHEMA, FORBIDDEN, pause_s=0.1) as server:
        reader = fresh()
        reader.read_registry_ids(IdLookup(SchemaRegistry(server.url, timeout_s=5)))
        reader.decode(framed(9))  # read before: what the question asks for
        reasons: list[str | None] = []

        def refused() -> bool:
            with loop_patience(LoopWaits(per_second_s=0.01)):
                reasons.append(reader.unresolved(framed(7)))
            return reasons[-1] is None

        wait_until(refused, 10, "id 7 refused")
        with pytest.raises(DecodeFailed, match="not this one") as dead:
            reader.decode(framed(7))
        assert not dead.value.retriable
        assert not [r for r in reasons if r and "not retried" in r]  # never taken for the registry away
        assert server.asked == ["/schemas/ids/9", "/schemas/ids/7", "/schemas/ids/9", "/schemas/ids/7"]


def test_a_call_outside_a_loop_that_outlasts_the_timeout_stays_the_one_call_out() -> None:
    """Forgotten once waited for, a stuck call had another thread started beside it at each id
    asked for after the registry's outage: threads piled up (a review)."""
    trickled = [bytes([b]) for b in SCHEMA[0]]  # a byte every 0.1 s: each wait on the socket within its timeout
    with RawReplies(trickled, pause_s=0.1) as server:
        reader = fresh()
        reader.read_registry_ids(IdLookup(SchemaRegistry(server.url, timeout_s=0.5), outage=Outage(quiet_s=0.0)))
        with pytest.raises(DecodeFailed, match="no whole answer") as slow:
            reader.decode(framed(7))
        assert slow.value.retriable
        with pytest.raises(DecodeFailed, match="still answering an earlier lookup"):
            reader.decode(framed(8))
        assert server.asked == ["/schemas/ids/7"]


def test_a_403s_question_asks_first_for_the_id_this_process_registered() -> None:
    """The list of subjects may need a global permission that per-subject access lacks: asked
    first, the question came back refused and the record waited as before (a review)."""
    with RawReplies(FORBIDDEN, SCHEMA) as server:
        writer = fresh()
        writer.write_registry_id(42)
        wire.read_ids(SchemaRegistry(server.url, timeout_s=5), [writer])
        with pytest.raises(DecodeFailed, match="not this one"):
            writer.decode(framed(7))
        assert server.asked == ["/schemas/ids/7", "/schemas/ids/42"]


def test_a_command_outside_a_poll_loop_waits_for_the_registrys_answer() -> None:
    with RawReplies(SCHEMA, pause_s=0.3) as server:
        reader = fresh()
        reader.read_registry_ids(IdLookup(SchemaRegistry(server.url, timeout_s=5)))
        assert reader.decode(framed(7))["request_id"] == REQUEST["request_id"]


@pytest.mark.parametrize("url", ["http://[::1", "http://registry:port", "http://:8081", "http://registry:0"])
def test_a_registry_url_urllib_cannot_use_is_one_config_error(url: str) -> None:
    with pytest.raises(ConfigError, match="--schema-registry"):
        SchemaRegistry(url)
    with pytest.raises(ConfigError) as masked:
        SchemaRegistry(url.replace("://", "://user:Pw0rd@"))
    assert "Pw0rd" not in str(masked.value)


@pytest.mark.parametrize("answer", [{"schemaType": "PROTOBUF", "schema": "syntax = 'proto3';"},
                                    {"schema": '"string"'}, {"schema": "{not json"}])
def test_an_id_whose_schema_no_one_reads_as_avro_is_refused_for_good_not_waited_for(answer: dict[str, str]) -> None:
    """Taken for the registry being down: the record waited, its partition with it, for ever, and
    every other unseen id waited out the outage it recorded again each second (a review)."""
    with RawReplies(http_reply(json.dumps(answer).encode())) as server:
        reader = fresh()
        reader.read_registry_ids(IdLookup(SchemaRegistry(server.url, timeout_s=5)))
        framed = b"\x00\x00\x00\x00\x07" + codec("request").encode(REQUEST)[10:]
        assert reader.unresolved(framed) is None
        with pytest.raises(DecodeFailed) as refused:
            reader.decode(framed)
        assert not refused.value.retriable and "schema id 7" in refused.value.message


@pytest.fixture
def shared_codecs_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    """`wire.configure` sets the process' shared codecs to look ids up: put back after the test."""
    for name in CODEC_NAMES:
        monkeypatch.setattr(codec(name), "_lookup", codec(name)._lookup)


UNAUTHORIZED = http_reply(b'{"error_code": 401, "message": "Unauthorized"}', status="401 Unauthorized")


@pytest.mark.usefixtures("shared_codecs_restored")
@pytest.mark.parametrize(("user", "says"), [
    ("reader:s3cret@", "refused the credentials in its URL"),
    ("", "needs credentials: give them as user:password@"),
])  # fmt: skip
def test_credentials_the_registry_refuses_are_one_config_error_at_start(user: str, says: str) -> None:
    """Found at the first registry-framed record they held it, and its partition, for good."""
    with RawReplies(UNAUTHORIZED) as server, pytest.raises(ConfigError, match=says) as caught:
        wire.configure(KafkaSettings(schema_registry=server.url.replace("http://", f"http://{user}")))
    assert "s3cret" not in str(caught.value) and "HTTP 401" in str(caught.value)


@pytest.mark.usefixtures("shared_codecs_restored")
def test_undeploys_courtesy_check_is_not_skipped_for_a_registry_that_refuses_us() -> None:
    """`undeploy` checks the model it stops is not the one answers come from: a stale registry
    setting made the check a note ("could not be asked") and the model was stopped (a review)."""
    from rich.console import Console

    from services.cli.deploy import UndeploySettings, _read_from_broker

    with RawReplies(UNAUTHORIZED) as server:
        settings = UndeploySettings(bootstrap="127.0.0.1:9", schema_registry=server.url)
        assert _read_from_broker(settings, Console(file=io.StringIO()), lambda _config: "checked") == "checked"


@pytest.mark.usefixtures("shared_codecs_restored")
@pytest.mark.parametrize("status", ["503 Service Unavailable", "403 Forbidden"])
def test_a_registry_not_answering_at_start_is_warned_of_and_the_command_goes_on(
    status: str, caplog: pytest.LogCaptureFixture
) -> None:
    # 403: these credentials may not list subjects, yet may read schemas by id.
    with RawReplies(http_reply(b'{"message": "no"}', status=status)) as server, caplog.at_level("WARNING"):
        wire.configure(KafkaSettings(schema_registry=server.url))
    assert any("not usable at start" in r.getMessage() and status[:3] in r.getMessage() for r in caplog.records)
    assert codec("request").looks_up_ids  # registry framing still read, once it answers


@pytest.mark.parametrize(("reply", "says"), [
    (http_reply(b"[" * 100_000, status="404 Not Found"), r"HTTP 404"),  # nested past the parser's stack
    (http_reply(b"[" * 100_000, status="503 Service Unavailable"), r"HTTP 503"),
    (http_reply(b'{"message": "down', status="503 Service Unavailable", length=5000), r"HTTP 503"),  # cut short
    (http_reply(b"x" * (2 * 1024 * 1024), status="404 Not Found"), r"HTTP 404"),  # read no further than 64 KiB
])  # fmt: skip
def test_an_error_reply_no_registry_would_give_is_a_registry_error_not_a_crash(reply: list[bytes], says: str) -> None:
    """An error reply's body was read whole and parsed unguarded: one nested deep (RecursionError) or
    cut short (IncompleteRead) escaped as no RegistryError and ended the service, at each restart
    again; one without end grew the process to 18 GB (a review)."""
    with RawReplies(reply) as server, pytest.raises(RegistryError, match=says) as refused:
        SchemaRegistry(server.url, timeout_s=5).schema(7)
    assert not refused.value.permanent


@pytest.mark.parametrize(("status", "body", "permanent"), [
    ("404 Not Found", b'{"error_code": 40403, "message": "Schema 7 not found"}', True),
    ("404 Not Found", b"<html>Not Found</html>", False),  # a proxy's page, or a wrong base path
    ("302 Found", b"", False),  # a single sign-on proxy, http -> https
    ("407 Proxy Authentication Required", b"", False),
    ("400 Bad Request", b'{"error_code": 400, "message": "?"}', False),
])
def test_only_the_registrys_own_not_found_refuses_an_id_for_good(status: str, body: bytes, permanent: bool) -> None:
    """Every status but 5xx, 401, 403, 408 and 429 was the id's fault: a redirect, a proxy's 404 page
    or a 407 marked a valid id refused, and every record of it was dead-lettered until a restart."""
    with RawReplies(http_reply(body, status=status)) as server, pytest.raises(RegistryError) as refused:
        SchemaRegistry(server.url, timeout_s=5).schema(7)
    assert refused.value.permanent is permanent


@pytest.mark.usefixtures("shared_codecs_restored")
def test_a_registry_url_that_is_no_registry_api_is_one_config_error_at_start() -> None:
    """A 404 or a redirect from /subjects, which every registry answers, was a warning: every record
    framed by it then waited for good."""
    with RawReplies(http_reply(b"<html>Not Found</html>", status="404 Not Found")) as server, \
            pytest.raises(ConfigError, match=r"--schema-registry answers no registry API there .* is the URL the"):
        wire.configure(KafkaSettings(schema_registry=server.url))


def test_ids_resolved_to_a_version_we_read_are_bounded_and_our_own_stays(monkeypatch: pytest.MonkeyPatch) -> None:
    """A registry answering every made-up id with one of our schemas grew the id cache for good."""
    from services.core import codec as codec_module

    monkeypatch.setattr(codec_module, "_MAX_KNOWN_IDS", 50)
    reader = fresh()
    reader.write_registry_id(7)
    reader.read_registry_ids(lambda _schema_id: codec("request").schema)
    body = codec("request").encode(REQUEST)[10:]
    for schema_id in range(100, 300):
        assert reader.decode(b"\x00" + schema_id.to_bytes(4, "big") + body)["request_id"] == REQUEST["request_id"]
    assert len(reader._by_id) <= 50 and 7 in reader._by_id


def test_a_registrys_error_text_echoing_the_credentials_is_masked_in_a_dead_letter_reason() -> None:
    """The registry's message goes into the dead letter's reason, which was not masked, and the
    Basic token (base64 of user:password) was no remembered secret (a review)."""
    import base64

    from services.core.deadletter import clean_reason
    from services.core.registry import SchemaRegistry

    SchemaRegistry("http://dluser:DeadL3tterPw@127.0.0.1:9/", timeout_s=1)
    token = base64.b64encode(b"dluser:DeadL3tterPw").decode()
    reason = clean_reason(f"schema id 7: HTTP 403 bad header Authorization: Basic {token} (DeadL3tterPw)")
    assert token not in reason and "DeadL3tterPw" not in reason and "HTTP 403" in reason


def test_a_status_line_trickled_byte_by_byte_does_not_hold_the_lookup_past_its_timeout() -> None:
    """The deadline was checked only while the body was read: a status line, headers or chunk
    sizes sent a byte at a time held the poll loop as long as they went on (a review: 45 s for a
    2 s timeout). The lookup gives up while the reply is still coming, as one the registry would
    answer later."""
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    chunks = [head[i:i + 1] for i in range(len(head))]
    with RawReplies(chunks, pause_s=0.2) as server:
        lookup = IdLookup(SchemaRegistry(server.url, timeout_s=1))
        with pytest.raises(DecodeFailed, match="no whole answer within 1 s") as slow:
            lookup(7)
        assert slow.value.retriable and server.sent < len(chunks)  # given up while the reply still came
        with pytest.raises(DecodeFailed, match="not retried for 5 s"):  # the outage: not asked again at once
            lookup(8)


def test_a_flood_of_made_up_ids_on_one_record_type_spends_no_other_types_lookups() -> None:
    """Any client may write the requests topic: its made-up ids spent the lookups of every topic,
    and a model worker's new Score schema id was dead-lettered in that second (a review)."""
    score_schema = json.dumps({"schema": json.dumps(codec("score").schema)}).encode()
    not_found = http_reply(b'{"error_code": 40403, "message": "Schema not found"}', status="404 Not Found")
    per_second = 3
    with RawReplies(*([not_found] * per_second), http_reply(score_schema)) as server:
        requests, scores = fresh(), Codec(codec("score").schema, [])
        wire.read_ids(SchemaRegistry(server.url, timeout_s=5), [requests, scores], clock=lambda: 0.0,
                      per_second=per_second)  # one second: the flood and the score's lookup in it
        body = codec("request").encode(REQUEST)[10:]
        for made_up in range(1, per_second + 1):
            with pytest.raises(DecodeFailed, match=f"schema id {made_up}: .*not found") as refused:
                requests.decode(b"\x00" + made_up.to_bytes(4, "big") + body)
            assert not isinstance(refused.value, LookupsSpent)
        with pytest.raises(LookupsSpent):  # the flood's own record type has spent its lookups
            requests.decode(b"\x00\x00\x00\x00\x63" + body)
        score = codec("score").encode({"request_id": "r-1", "model": "m", "version": "2", "instance": "", "score": 0.5,
                                       "label": None, "error": None, "deadline": 1, "received_at": 1, "scored_at": 1,
                                       "compute_ms": 1.0})
        assert scores.decode(b"\x00\x00\x00\x00\x07" + score[10:]) == codec("score").decode(score)


def test_an_id_no_registry_gives_is_refused_without_asking() -> None:
    """Registries number schemas with Java ints: an id past 2**31-1 asked for could get a 404 of
    the registry's web framework, which marked the registry away for 5 s for every record type."""
    asked: list[int] = []

    def lookup(schema_id: int) -> dict[str, Any]:
        asked.append(schema_id)
        return codec("request").schema

    reader = fresh()
    reader.read_registry_ids(lookup)
    body = codec("request").encode(REQUEST)[10:]
    for _ in range(2):
        with pytest.raises(UnknownFingerprint, match=r"schema id 4294967295 is beyond any registry's ids"):
            reader.decode(b"\x00\xff\xff\xff\xff" + body)
    assert reader.unresolved(b"\x00\xff\xff\xff\xff" + body) is None  # refused for good: not waited for
    assert reader.decode(b"\x00\x7f\xff\xff\xff" + body)["request_id"] == REQUEST["request_id"]
    assert asked == [2**31 - 1]


@pytest.mark.parametrize(("url", "clear"), [
    ("http://alice:secret@registry:8081", True), ("HTTP://alice@registry:8081", True),
    ("https://alice:secret@registry:8081", False), ("http://registry:8081", False),
])
def test_a_registry_password_over_plain_http_is_warned_of(url: str, clear: bool) -> None:
    """Accepted without a word: Basic auth over http sends the password in clear (a review)."""
    from services.core.wire import credentials_in_clear

    assert credentials_in_clear(url) is clear


def test_configure_warns_of_a_registry_password_over_plain_http(monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """Said once at start, without the URL (it holds the password)."""
    from services.core.settings import KafkaSettings

    monkeypatch.setattr(wire, "check_registry_credentials", lambda _registry: None)
    monkeypatch.setattr(wire, "read_ids", lambda _registry, _codecs: None)
    with caplog.at_level("WARNING", logger="services.core.wire"):
        wire.configure(KafkaSettings(schema_registry="http://alice:s3cret@registry:8081"))
    assert "has a user and password and plain http" in caplog.text and "s3cret" not in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="services.core.wire"):
        wire.configure(KafkaSettings(schema_registry="https://alice:s3cret@registry:8081"))
    assert "plain http" not in caplog.text


def test_the_lookup_tells_the_registrys_not_found_from_a_schema_nobody_can_read() -> None:
    """Both were refused alike; the codec asks again after a while only for the first (a review)."""
    not_found = http_reply(b'{"error_code": 40403, "message": "Schema not found"}', status="404 Not Found")
    protobuf = http_reply(json.dumps({"schemaType": "PROTOBUF", "schema": "syntax = \"proto3\";"}).encode())
    with RawReplies(not_found, protobuf) as server:
        lookup = IdLookup(SchemaRegistry(server.url, timeout_s=5))
        with pytest.raises(DecodeFailed) as missing:
            lookup(7)
        with pytest.raises(DecodeFailed, match="not an Avro schema") as unusable:
            lookup(8)
    assert missing.value.not_found and not unusable.value.not_found


def test_an_old_not_found_asked_again_while_the_registry_is_away_waits_for_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The re-ask failing for now left the old verdict standing: past 2 re-asks a second, valid
    records of the id were dead-lettered on it during the outage (a review)."""
    from services.core import codec as codec_module

    clock = [1000.0]
    monkeypatch.setattr(codec_module.time, "monotonic", lambda: clock[0])
    answers = ["not found", "away"]

    def lookup(schema_id: int) -> dict[str, Any]:
        refused = DecodeFailed(f"schema id {schema_id}: HTTP 404", retriable=answers[0] == "away")
        refused.not_found = answers[0] == "not found"
        raise refused

    reader = fresh()
    reader.read_registry_ids(lookup)
    framed = b"\x00\x00\x00\x00\x29" + codec("request").encode(REQUEST)[10:]
    with pytest.raises(DecodeFailed):
        reader.decode(framed)
    answers.pop(0)
    clock[0] += codec_module.NOT_FOUND_FOR_S
    for _ in range(5):  # more than the re-asks of a second: each waits for the registry
        with pytest.raises(DecodeFailed) as failed:
            reader.decode(framed)
        assert failed.value.retriable
