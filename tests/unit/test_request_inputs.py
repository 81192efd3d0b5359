"""The digest of a request's inputs (services/core/request_inputs.py): one for the client that
sends a request and the rendezvous that answers it, whatever schema each runs."""

from __future__ import annotations

import copy

from fastavro import parse_schema
from fastavro.schema import to_parsing_canonical_form

from services.client.client import make_request
from services.core.codec import Codec, codec
from services.core.request_inputs import _COMPILED, INPUTS_SCHEMA, digest_of
from services.rendezvous.records import request_decoded, request_in


def test_the_fixed_form_is_the_current_request_schemas_features_and_payload() -> None:
    """What the rendezvous' walk slices out of a record (features, then payload) is this form's encoding."""
    current = [f for f in codec("request").schema["fields"] if f["name"] in ("features", "payload")]
    canonical = to_parsing_canonical_form  # names, types and order: what the encoding follows
    assert canonical(parse_schema({**INPUTS_SCHEMA, "fields": current})) == canonical(parse_schema(INPUTS_SCHEMA))
    assert _COMPILED is not None  # the fast path a client takes for every request


def test_a_reader_one_schema_version_ahead_digests_an_older_clients_request_as_the_client_does() -> None:
    """A Payload field added with a default (readers upgrade first): the rendezvous wrote the new
    field into its digest of an older client's request and the client did not, so the client
    refused its own answer to every request with a payload (a review's script)."""
    older = codec("request")
    newer_schema = copy.deepcopy(older.schema)
    payload = next(f for f in newer_schema["fields"] if f["name"] == "payload")
    payload["type"][1]["fields"].append({"name": "encoding", "type": ["null", "string"], "default": None})
    newer = Codec(newer_schema, [older.schema])
    for sent in (None, ("image/png", b"\x89PNG")):
        request = make_request({"a": 1.0}, budget_ms=1000, reply_topic="rdv.replies", reply_partition=0, payload=sent)
        value = older.encode(request)
        mine = digest_of(request)
        assert request_in(newer, value, 0, 0, 0).inputs == mine == request_in(older, value, 0, 0, 0).inputs
        assert request_decoded(newer, value, 0, 0, 0).inputs == mine


def test_values_the_compiled_encoder_leaves_to_fastavro_get_the_same_digest() -> None:
    plain = {"features": {"a": 1.0, "b": -0.0}, "payload": None}
    numpy_like = {"features": {"a": 1, "b": -0.0}, "payload": None}  # an int where a double is due: fastavro's
    assert digest_of(numpy_like) == digest_of(plain)


def test_a_request_encoded_with_its_digest_is_the_codecs_encoding_and_the_digest() -> None:
    """The client writes the inputs once for both: the bytes must be the codec's, in either framing,
    with or without a payload, metadata or a return address; a codec whose inputs are not the fixed
    form (a later schema) writes its records whole."""
    from services.core.request_inputs import _around_inputs, encoded_with_digest

    requests = [
        make_request({"a": 1.0, "é": -0.0}, budget_ms=200, reply_topic="rdv.replies", reply_partition=3),
        make_request({}, budget_ms=200, reply_topic=None, reply_partition=None, payload=("image/png", b"\x89PNG" * 99),
                     metadata={"tenant": "t", "trace": "x" * 300}),
        make_request({f"f{i}": float(i) for i in range(200)}, budget_ms=200, reply_topic="other", reply_partition=None),
        {**make_request({"a": 1.0}, budget_ms=200, reply_topic=None, reply_partition=None), "features": {"a": 1}},
    ]
    registry = Codec(codec("request").schema)
    registry.write_registry_id(7)
    newer_schema = copy.deepcopy(codec("request").schema)
    payload = next(f for f in newer_schema["fields"] if f["name"] == "payload")
    payload["type"][1]["fields"].append({"name": "encoding", "type": ["null", "string"], "default": None})
    newer = Codec(newer_schema)
    assert _around_inputs(codec("request")) is not None and _around_inputs(newer) is None
    for writer in (codec("request"), registry, newer):
        for request in requests:
            written = request if writer is not newer else {**request, "payload": request["payload"] and {
                **request["payload"], "encoding": None}}
            assert encoded_with_digest(writer, written) == (writer.encode(written), digest_of(request))
