"""Requests and scores read by the compiled walks (services/core/compiled_requests.py,
services/rendezvous/compiled_records.py): what `request_in` / `score_in` make of a record is what
fastavro's decode makes of it, and a record the walk takes is one fastavro reads the same. A
damaged one is refused, with fastavro's error when fastavro refuses it too: some invalid bytes
fastavro reads (a union's branch -1), the walk does not."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.core.avro_writer import long_bytes, string_bytes
from services.core.codec import HEADER_SIZE, Codec, codec
from services.core.compiled_requests import walk_request
from services.core.errors import BadInput, DecodeFailed
from services.core.requests import MAX_REQUEST_ID
from services.core.score_limits import MAX_ERROR_CHARS, MAX_LABEL_CHARS, MAX_VERSION_CHARS
from services.rendezvous.compiled_records import walk_score
from services.rendezvous.records import request_decoded, request_in, score_decoded, score_in

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
REQUESTS, SCORES = codec("request"), codec("score")

text = st.text(max_size=30)  # any code point Python can encode, empty included
doubles = st.floats(width=64)  # NaN and infinities too: the walk does not look at features
epoch = st.integers(min_value=-(2**63), max_value=2**63 - 1)

requests = st.fixed_dictionaries({
    "request_id": text, "created_at": epoch, "deadline": epoch,
    "reply_to": st.one_of(st.none(), st.fixed_dictionaries({
        "topic": text, "partition": st.one_of(st.none(), st.integers(-(2**31), 2**31 - 1))})),
    "features": st.dictionaries(text, doubles, max_size=8),
    "payload": st.one_of(st.none(), st.fixed_dictionaries({"content_type": text, "data": st.binary(max_size=20)})),
    "metadata": st.dictionaries(text, text, max_size=3),
})  # fmt: skip
scores = st.fixed_dictionaries({
    "request_id": text, "model": text, "version": text, "instance": text,
    "score": st.one_of(st.none(), doubles), "label": st.one_of(st.none(), text),
    "error": st.one_of(st.none(), text), "deadline": epoch, "received_at": epoch, "scored_at": epoch,
    "compute_ms": doubles,
})  # fmt: skip


def outcome(read: Any, codec: Codec, value: bytes) -> Any:
    """What a reader makes of `value`: its record's fields, or the kind of error it raised (fastavro's
    messages name objects by their address)."""
    try:
        found = read(codec, value, 3, 7, 11)
    except BadInput as err:
        return type(err).__name__
    # NaN != NaN: compare the floats by their text.
    return tuple(repr(x) if isinstance(x, float) else x for x in (getattr(found, f) for f in found.__slots__))


@FAST
@given(record=requests)
def test_a_request_reads_as_fastavro_reads_it(record: dict[str, Any]) -> None:
    value = REQUESTS.encode(record)
    assert walk_request(value, HEADER_SIZE)[0] == 1
    assert outcome(request_in, REQUESTS, value) == outcome(request_decoded, REQUESTS, value)


def test_a_request_s_inputs_digest_covers_its_features_in_their_order_and_its_payload_only() -> None:
    """What a repeated request_id is compared by (join.py): a retry may come with a new created_at,
    deadline, return address or metadata, not with other inputs."""
    base = {"request_id": "r", "created_at": 1, "deadline": 2, "reply_to": None, "features": {"a": 1.0, "b": 2.0},
            "payload": None, "metadata": {}}

    def digest(**changes: Any) -> bytes:
        return request_in(REQUESTS, REQUESTS.encode({**base, **changes}), 0, 0, 0).inputs

    assert digest(request_id="s", created_at=5, deadline=9, reply_to={"topic": "t", "partition": None},
                  metadata={"trace": "x"}) == digest()
    others = [digest(features={"a": 1.0, "b": 2.5}), digest(features={"a": 1.0}), digest(features={"b": 2.0, "a": 1.0}),
              digest(payload={"content_type": "x", "data": b""})]
    assert digest() not in others and len(set(others)) == len(others)


@FAST
@given(record=scores)
def test_a_score_reads_as_fastavro_reads_it(record: dict[str, Any]) -> None:
    value = SCORES.encode(record)
    assert walk_score(value, HEADER_SIZE)[0] == 1
    assert outcome(score_in, SCORES, value) == outcome(score_decoded, SCORES, value)


def refused_or_read(read: Any, codec: Codec, value: bytes, walked: int) -> Any:
    """What the service's reader must make of `value`: fastavro's reading where the walk takes it
    (then fastavro reads it too), else a refusal: fastavro's error, or ours where it reads it."""
    decoded = outcome(read, codec, value)
    if walked:
        codec.decode(value)  # fastavro reads it too
        return decoded
    return decoded if isinstance(decoded, str) else "DecodeFailed"


def damaged(value: bytes, position: int, byte: int, cut: int) -> bytes:
    data = bytearray(value)
    data[HEADER_SIZE + position % (len(data) - HEADER_SIZE)] = byte
    return bytes(data[: len(data) - cut])


@FAST
@given(record=requests, position=st.integers(0, 10_000), byte=st.integers(0, 255), cut=st.integers(0, 2))
def test_a_damaged_request_the_walk_takes_is_one_fastavro_reads_the_same(
    record: dict[str, Any], position: int, byte: int, cut: int
) -> None:
    value = damaged(REQUESTS.encode(record), position, byte, cut)
    assert outcome(request_in, REQUESTS, value) == refused_or_read(request_decoded, REQUESTS, value,
                                                                   walk_request(value, HEADER_SIZE)[0])


@FAST
@given(record=scores, position=st.integers(0, 10_000), byte=st.integers(0, 255), cut=st.integers(0, 2))
def test_a_damaged_score_the_walk_takes_is_one_fastavro_reads_the_same(
    record: dict[str, Any], position: int, byte: int, cut: int
) -> None:
    value = damaged(SCORES.encode(record), position, byte, cut)
    assert outcome(score_in, SCORES, value) == refused_or_read(score_decoded, SCORES, value,
                                                               walk_score(value, HEADER_SIZE)[0])


@pytest.mark.parametrize("raw", [b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82", b"\xff", b"\x80"])
def test_a_string_that_is_not_utf8_is_left_to_fastavro(raw: bytes) -> None:
    value = SCORES.encode({"request_id": "r", "model": "m", "version": "v", "instance": "", "score": 0.5,
                           "label": "ab", "error": None, "deadline": 1, "received_at": 1, "scored_at": 1,
                           "compute_ms": 1.0})  # fmt: skip
    bad = value.replace(b"\x04ab", bytes([2 * len(raw)]) + raw)  # the label's length, then the bytes
    assert walk_score(bad, HEADER_SIZE)[0] == 0
    with pytest.raises(BadInput):
        score_in(SCORES, bad, 0, 0, 0)


MIN_LONG = b"\xff" * 9 + b"\x01"  # -2**63 as Avro writes it (zig-zag: 2**64 - 1); its negation overflows


HUGE_BLOCKS = {
    # -2**63 (a block of 2**63 entries, then its size) stays negative when negated in 64 bits:
    # fastavro reads it as an empty block; the walk counted it as -2**63 features, which made a
    # request of no features look like one with some.
    "features, -2**63": (MIN_LONG + b"\x00" + b"\x00", b"\x00"),
    "metadata, -2**63": (b"\x00", MIN_LONG + b"\x00" + b"\x00"),
    # 2**62 entries (zig-zag 2**63): twice that overflows; fastavro runs out of bytes.
    "metadata, 2**62": (b"\x00", b"\x80" * 9 + b"\x01" + b"\x00"),
}


@pytest.mark.parametrize("kind", sorted(HUGE_BLOCKS))
def test_a_map_block_too_large_for_64_bits_is_refused(kind: str) -> None:
    features, metadata = HUGE_BLOCKS[kind]
    body = (string_bytes("r-1") + long_bytes(1) + long_bytes(2) + b"\x00" + features
            + b"\x02" + string_bytes("text/plain") + string_bytes("x") + metadata)  # fmt: skip
    value = REQUESTS.header + body
    assert walk_request(value, HEADER_SIZE)[0] == 0
    assert outcome(request_in, REQUESTS, value) == refused_or_read(request_decoded, REQUESTS, value, 0)
    assert outcome(request_in, REQUESTS, value) == "DecodeFailed"


def branch_minus_one(value: bytes, before: bytes, branch: int) -> bytes:
    """`value` with the union branch `branch` written after `before` made -1 (zig-zag 1)."""
    at = value.index(before) + len(before)
    assert value[at] == 2 * branch
    return value[:at] + b"\x01" + value[at + 1 :]


def test_a_union_branch_of_minus_one_is_refused_though_fastavro_reads_it() -> None:
    """fastavro takes branch -1 for the union's last: a forged record (here the same fields with
    their branch written -1) was read as valid and answered with confidence. Refused, as by the
    specification (and by the walks)."""
    request = REQUESTS.encode({"request_id": "r-1", "created_at": 1, "deadline": 2,
                               "reply_to": {"topic": "t", "partition": None}, "features": {"a": 1.0},
                               "payload": None, "metadata": {}})
    forged = branch_minus_one(request, string_bytes("r-1") + long_bytes(1) + long_bytes(2), 1)
    score = SCORES.encode({"request_id": "r", "model": "m", "version": "v", "instance": "i", "score": 0.5,
                           "label": None, "error": None, "deadline": 1, "received_at": 1, "scored_at": 1,
                           "compute_ms": 1.0})  # fmt: skip
    forged_score = branch_minus_one(score, string_bytes("i"), 1)
    assert request_decoded(REQUESTS, forged, 0, 0, 0).reply_topic == "t"  # fastavro's reading
    assert score_decoded(SCORES, forged_score, 0, 0, 0).score == 0.5
    with pytest.raises(DecodeFailed, match="union's branch out of range"):
        request_in(REQUESTS, forged, 0, 0, 0)
    with pytest.raises(DecodeFailed, match="union's branch out of range"):
        score_in(SCORES, forged_score, 0, 0, 0)


@pytest.mark.parametrize("read", [request_in, request_decoded])
def test_a_request_whose_id_is_too_long_to_answer_by_is_refused(read: Any) -> None:
    """Its answer, which carries the id twice (key and value), might not fit a Kafka record."""
    base = {"created_at": 5, "deadline": 0, "reply_to": None, "features": {"a": 1.0}, "payload": None,
            "metadata": {}}
    assert read(REQUESTS, REQUESTS.encode({**base, "request_id": "r" * MAX_REQUEST_ID}), 0, 0, 9).problem is None
    with pytest.raises(DecodeFailed, match=f"request_id of {MAX_REQUEST_ID + 1} characters"):
        read(REQUESTS, REQUESTS.encode({**base, "request_id": "r" * (MAX_REQUEST_ID + 1)}), 0, 0, 9)


@pytest.mark.parametrize("read", [score_in, score_decoded])
def test_a_score_whose_id_no_request_can_have_is_refused(read: Any) -> None:
    score = {"request_id": "r" * (MAX_REQUEST_ID + 1), "model": "m", "version": "1", "instance": "", "score": 0.5,
             "label": None, "error": None, "deadline": 0, "received_at": 0, "scored_at": 0, "compute_ms": 0.1}
    with pytest.raises(DecodeFailed, match="over the limit"):
        read(SCORES, SCORES.encode(score), 0, 0, 9)


@pytest.mark.parametrize("read", [score_in, score_decoded])
def test_a_score_keeps_no_more_text_than_a_worker_writes(read: Any) -> None:
    """A forged score's label, version or error near the record size was kept whole by its mailbox
    (a megabyte a score: 64 of them held 85 MB; a review). A label or version longer than a worker
    writes is refused; an error text is cut where the workers cut theirs."""
    score = {"request_id": "r", "model": "m", "version": "1", "instance": "", "score": 0.5, "label": None,
             "error": None, "deadline": 0, "received_at": 0, "scored_at": 0, "compute_ms": 0.1}
    kept = read(SCORES, SCORES.encode({**score, "label": "l" * MAX_LABEL_CHARS, "version": "v" * MAX_VERSION_CHARS,
                                       "error": "e" * 900_000}), 0, 0, 9)
    assert (len(kept.label), len(kept.version), kept.error) == (MAX_LABEL_CHARS, MAX_VERSION_CHARS,
                                                                 "e" * MAX_ERROR_CHARS)
    with pytest.raises(DecodeFailed, match=f"a label of 900000 characters \\(at most {MAX_LABEL_CHARS}\\)"):
        read(SCORES, SCORES.encode({**score, "label": "l" * 900_000}), 0, 0, 9)
    with pytest.raises(DecodeFailed, match="a version of 1025 characters"):
        read(SCORES, SCORES.encode({**score, "version": "v" * (MAX_VERSION_CHARS + 1)}), 0, 0, 9)
    with pytest.raises(DecodeFailed, match="a model name of 900000 characters"):  # a metric label value too
        read(SCORES, SCORES.encode({**score, "model": "m" * 900_000}), 0, 0, 9)


def test_a_record_registry_framed_with_the_current_schema_is_walked_and_refused_alike() -> None:
    """Registry framing skipped the walk: the same forged body framed 00 + the current schema's
    id was read by fastavro as valid (a review). Known to name the current schema, the id's
    records are walked as single-object ones are."""
    requests, scores = Codec(REQUESTS.schema, []), Codec(SCORES.schema, [])
    for reader in (requests, scores):
        reader.write_registry_id(7)  # as the registry answered: id 7 is the current schema
    request = {"request_id": "r-1", "created_at": 1, "deadline": 2, "reply_to": {"topic": "t", "partition": None},
               "features": {"a": 1.0}, "payload": None, "metadata": {}}
    score = {"request_id": "r", "model": "m", "version": "v", "instance": "i", "score": 0.5, "label": None,
             "error": None, "deadline": 1, "received_at": 1, "scored_at": 1, "compute_ms": 1.0}
    framed_request, framed_score = requests.encode(request), scores.encode(score)
    assert framed_request[:5] == framed_score[:5] == b"\x00\x00\x00\x00\x07"
    assert requests.current_body(framed_request) == 5 and requests.current_body(b"\x00\x00\x00\x00\x08") == 0
    assert outcome(request_in, requests, framed_request) == outcome(request_decoded, requests, framed_request)
    assert outcome(score_in, scores, framed_score) == outcome(score_decoded, scores, framed_score)
    forged = branch_minus_one(framed_request, string_bytes("r-1") + long_bytes(1) + long_bytes(2), 1)
    forged_score = branch_minus_one(framed_score, string_bytes("i"), 1)
    with pytest.raises(DecodeFailed, match="union's branch out of range"):
        request_in(requests, forged, 0, 0, 0)
    with pytest.raises(DecodeFailed, match="union's branch out of range"):
        score_in(scores, forged_score, 0, 0, 0)


def test_a_registry_id_met_in_the_record_s_own_decode_is_walked_too() -> None:
    """An id not looked up before the handler (its lookups of the second spent, or evicted) went
    to fastavro alone: a forged body was read as valid, and the same bytes' inputs digest differed
    from the walked one's, so a retry straddling the lookup was a conflicting request (a review)."""
    request = {"request_id": "r-1", "created_at": 1, "deadline": 2, "reply_to": {"topic": "t", "partition": None},
               "features": {"a": 1.0, "b": 2.0}, "payload": None, "metadata": {}}
    body = REQUESTS.encode(request)[HEADER_SIZE:]
    # The features map written in two blocks (as a Java writer may): re-encoded, it is one.
    two_blocks = body.replace(b"\x04\x02a", b"\x02\x02a").replace(b"\x02b", b"\x02\x02b", 1)
    assert REQUESTS.decode(REQUESTS.header + two_blocks)["features"] == request["features"]
    digests = []
    for _ in range(2):  # a fresh reader, then the same reader once the id is known
        requests = Codec(REQUESTS.schema, [])
        requests.read_registry_ids(lambda _id: REQUESTS.schema)
        framed = b"\x00\x00\x00\x00\x09" + two_blocks
        digests += [request_in(requests, framed, 0, 0, 0).inputs, request_in(requests, framed, 0, 0, 0).inputs]
        before_reply_to = string_bytes("r-1") + long_bytes(1) + long_bytes(2)
        forged = branch_minus_one(b"\x00\x00\x00\x00\x0a" + body, before_reply_to, 1)
        with pytest.raises(DecodeFailed, match="union's branch out of range"):
            request_in(requests, forged, 0, 0, 0)
    assert len(set(digests)) == 1
