"""Model input contracts on a real broker: invented inputs get a precise error, never an answer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from prometheus_client import REGISTRY

from services.cli.send import SendSettings, warn_unknown_features
from services.client.client import Client, make_request
from services.core import kafka
from services.core.codec import codec
from services.core.model_info import ModelInfo, encode_model_info, read_model_infos
from services.core.settings import Topics
from services.core.signatures import Signature
from services.gateway.signatures import FeatureSpec, PublishedSignatures
from services.model_worker.models import DEMO_FEATURES, demo_rows
from tests.integration.harness import Services, read_topic, wait_for_partitions, wait_until
from tests.model_files import ranged_logistic_model

pytestmark = pytest.mark.kafka

MODELS = ("champion", "challenger", "canary")
MISSING_30 = "missing: mean_radius, mean_texture, mean_perimeter, mean_area, mean_smoothness (+25 more)"


def _skipped_by_workers(topic: str) -> float:
    return REGISTRY.get_sample_value(
        "rdv_decode_errors_total", {"service": "model_worker", "topic": topic, "error": "DecodeFailed"}
    ) or 0.0


def test_invented_inputs_get_precise_errors_and_contracts_are_published(
    services: Services, bootstrap: str, prefix: str, topics: Topics, config: dict[str, Any]
) -> None:
    for name in MODELS:
        services.worker(bootstrap, prefix, f"demo:{name}")
    services.rendezvous(bootstrap, prefix, models=MODELS)

    # Each worker published its contract on the compacted models topic.
    infos = read_model_infos(config, topics.models)
    assert set(infos) == set(MODELS)
    assert infos["champion"].version == "logreg-1"
    assert infos["champion"].signature.required == DEMO_FEATURES
    assert infos["canary"].signature.required == ("worst_area", "worst_concave_points")
    assert {info.signature.extra for info in infos.values()} == {"reject"}
    settings = SendSettings(bootstrap=bootstrap, topic_prefix=prefix, features="{}")
    warning = warn_unknown_features(settings, [{"mean radius": 14.1, "mean_radius": 14.1}])
    assert warning is not None and warning.startswith("warning: no published model reads 'mean radius';")

    rows: list[dict[str, float]] = [
        {"foo": 1.0},
        {"mean radius": 14.1},
        {"worst_concave_points": 0.1, "worst_area": 700.0},  # all the canary needs
        demo_rows(1, seed=4)[0],
    ]
    with Client(config, topics, budget_ms=20_000, answer_wait_s=60) as client:
        foo, spaced, canary_only, valid = client.score_many(rows)

    assert (foo.status, foo.model, foo.score) == ("ERROR", None, None)
    assert f"champion failed (unknown features: foo; {MISSING_30})" in foo.reason
    assert spaced.status == "ERROR"
    assert (
        f"challenger failed (unknown features: 'mean radius' (did you mean mean_radius?); {MISSING_30})"
        in spaced.reason
    )
    # The canary reads only two features, so it answers in place of the others (a fallback).
    assert (canary_only.status, canary_only.model) == ("FALLBACK", "canary")
    assert (valid.status, valid.model) == ("OK", "champion")

    scores = read_topic(config, topics.scores, expect=4 * len(MODELS), decode="score")
    by_request = {(s["request_id"], s["model"]): s for s in scores}
    for model in MODELS:
        failed = by_request[(foo.request_id, model)]
        assert failed["score"] is None and failed["label"] is None
        assert failed["error"].startswith("unknown features: foo; missing: ")
    assert by_request[(canary_only.request_id, "champion")]["error"].startswith("missing: mean_radius")


def test_a_request_with_neither_features_nor_payload_is_never_scored(
    services: Services, bootstrap: str, prefix: str, topics: Topics, config: dict[str, Any]
) -> None:
    for name in ("champion", "challenger"):
        services.worker(bootstrap, prefix, f"demo:{name}")
    skipped_before = _skipped_by_workers(topics.requests)
    # No features: the client refuses to send it; another producer may.
    empty = {**make_request({"x": 1.0}, budget_ms=5_000, reply_topic=None, reply_partition=None,
                            request_id="empty-1"), "features": {}}
    producer = Producer(config)
    producer.produce(topics.requests, codec("request").encode(empty), key=b"empty-1")
    assert producer.flush(30) == 0

    wait_until(lambda: _skipped_by_workers(topics.requests) - skipped_before >= 2, 60,
               "both workers to skip the empty request")
    # The scores of a valid request sent afterwards arrive; none for the empty one was written.
    valid = make_request(demo_rows(1)[0], budget_ms=5_000, reply_topic=None, reply_partition=None, request_id="ok-1")
    producer.produce(topics.requests, codec("request").encode(valid), key=b"ok-1")
    assert producer.flush(30) == 0
    scores = read_topic(config, topics.scores, expect=2, decode="score")
    assert sorted(s["model"] for s in scores) == ["challenger", "champion"]
    assert {s["request_id"] for s in scores} == {"ok-1"}


def test_the_gateway_follows_published_contracts_with_one_consumer(
    topics: Topics, config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """It read the models topic anew every 5 s: an admin client and a consumer each time (new
    connections; on a secured cluster a TLS handshake and a SASL login, 17,000 a day). One
    consumer follows it now; a contract published later, or withdrawn by a tombstone, shows."""
    producer = Producer(config)
    producer.produce(topics.models, encode_model_info(ModelInfo("a", "1", Signature.all_required(["x"]))), key=b"a")
    assert producer.flush(15) == 0
    signatures = PublishedSignatures(config, topics.models, refresh_s=0.1)
    try:
        assert signatures.models() == {"a": "1"}
        created: list[Any] = []
        real = kafka.new_client
        for module in (kafka.connect, kafka.consumer, kafka.producer, kafka.readers, kafka.groups):  # all make clients
            monkeypatch.setattr(module, "new_client", lambda kind, conf: created.append(kind) or real(kind, conf))
        producer.produce(topics.models, encode_model_info(ModelInfo("b", "2", Signature.all_required(["y"]))),
                         key=b"b")
        producer.produce(topics.models, None, key=b"a")
        assert producer.flush(15) == 0
        wait_until(lambda: signatures.models() == {"b": "2"}, 30, "the new contract and the tombstone")
        assert signatures.features("b") == [FeatureSpec("y", required=True)]
        assert created == []  # read after the patch, by the one consumer made before it
    finally:
        signatures.close()


def test_a_contract_wanted_is_read_at_once_not_at_the_next_refresh(topics: Topics, config: dict[str, Any]) -> None:
    """Published after the gateway's first read, a contract was unknown until the next refresh
    (5 s): calls to the schedule went to every model meanwhile (a review). Wanted, it is read now."""
    signatures = PublishedSignatures(config, topics.models, refresh_s=3600)  # no refresh but the wanted one
    try:
        assert signatures.features("late") is None
        producer = Producer(config)
        producer.produce(topics.models, encode_model_info(ModelInfo("late", "1", Signature.all_required(["z"]))),
                         key=b"late")
        assert producer.flush(15) == 0

        def known() -> bool:
            signatures.want()  # as each call to a target without the contract does
            return signatures.features("late") is not None

        wait_until(known, 60, "the wanted contract")
        assert signatures.features("late") == [FeatureSpec("z", required=True)]
    finally:
        signatures.close()


def test_the_gateway_sees_contracts_on_partitions_added_after_it_started(
    topics: Topics, config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One consumer that follows the topic for good never sees a partition added later: the feed
    is read again from the start every REREAD_S (the review of this change)."""
    from confluent_kafka.admin import NewPartitions

    from services.gateway import signatures as module

    monkeypatch.setattr(module, "REREAD_S", 0.5)
    signatures = PublishedSignatures(config, topics.models, refresh_s=0.1)
    try:
        assert signatures.models() == {}
        count = kafka.partition_counts(config, [topics.models])[topics.models]
        client = kafka.admin(config)  # referenced until the answer is in
        for future in client.create_partitions([NewPartitions(topics.models, count + 1)]).values():
            future.result(30)
        wait_for_partitions(config, [topics.models], count + 1)
        producer = Producer(config)
        producer.produce(topics.models, encode_model_info(ModelInfo("late", "1", Signature.all_required(["x"]))),
                         key=b"late", partition=count)  # the new partition
        assert producer.flush(15) == 0
        wait_until(lambda: signatures.models() == {"late": "1"}, 30, "the contract on the added partition")
    finally:
        signatures.close()


def test_models_lists_the_contracts_of_models_not_scoring_apart(
    bootstrap: str, prefix: str, topics: Topics, config: dict[str, Any]
) -> None:
    """`rendezvous models` listed a contract published by a model stopped days ago as one of the
    live ones (a newcomer review): it is now under its own heading, with when it was published."""
    from rich.console import Console

    from services.cli.model_contracts import print_contracts
    from services.core.settings import KafkaSettings

    producer = Producer(config)
    for name, at in (("live", 1_700_000_000_000), ("gone", 1_600_000_000_000)):
        info = ModelInfo(name, "1", Signature.all_required(["x"]), instance="host-1", updated_at=at)
        producer.produce(topics.models, encode_model_info(info), key=name.encode())
    assert producer.flush(15) == 0
    console = Console(record=True, width=200)
    print_contracts(KafkaSettings(bootstrap=bootstrap, topic_prefix=prefix), console, scoring={"live"})
    lines = console.export_text().splitlines()
    assert lines == [
        f"input contracts published on {topics.models}:",
        "  live 1: requires 1 (x); optional: none; extra features: reject; published by host-1",
        f"published on {topics.models} by models not scoring now:",
        "  gone 1: requires 1 (x); optional: none; extra features: reject; published by host-1, "
        "at 2020-09-13 12:26:40Z",
    ]


def test_models_lists_the_contracts_waiting_for_a_place(
    bootstrap: str, prefix: str, topics: Topics, config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the bound on contracts held, a model's contract waits, and no gateway checks its calls:
    `rendezvous models` did not say so (a review)."""
    from rich.console import Console

    from services.cli.model_contracts import print_contracts
    from services.core import model_info
    from services.core.settings import KafkaSettings

    monkeypatch.setattr(model_info, "MAX_CONTRACTS", 1)
    producer = Producer(config)
    for name in ("first", "second"):
        producer.produce(topics.models, encode_model_info(ModelInfo(name, "1", Signature.all_required(["x"]))),
                         key=name.encode(), partition=0)
    assert producer.flush(15) == 0
    console = Console(record=True, width=200)
    print_contracts(KafkaSettings(bootstrap=bootstrap, topic_prefix=prefix), console, scoring={"first"})
    lines = console.export_text().splitlines()
    assert lines[-2:] == [
        f"published on {topics.models} and waiting for a place (1 models, 16 MiB encoded; a tombstone frees one):",
        "  second",
    ]


def test_a_value_outside_a_file_models_declared_range_is_answered_error_not_scored(
    services: Services, bootstrap: str, prefix: str, topics: Topics, config: dict[str, Any], tmp_path: Path
) -> None:
    """A logistic model answers mean_radius = 1e6 with certainty; its sidecar's ranges (those of
    its training data) make that request an ERROR naming the bound, through the worker's usual
    route (the request walk), and the published contract carries them."""
    path, x = ranged_logistic_model(tmp_path)
    services.worker(bootstrap, prefix, str(path), name="champion")
    services.rendezvous(bootstrap, prefix, models=("champion",))

    contract = read_model_infos(config, topics.models)["champion"].signature.features[0]
    assert (contract.name, contract.minimum, contract.maximum) == ("mean_radius", x[:, 0].min(), x[:, 0].max())
    valid = demo_rows(1, seed=4)[0]
    with Client(config, topics, budget_ms=20_000, answer_wait_s=60) as client:
        inside, outside = client.score_many([valid, {**valid, "mean_radius": 1e6}])
    assert (inside.status, inside.model) == ("OK", "champion")
    assert outside.status == "ERROR" and outside.score is None
    assert (f"champion failed (outside the model's range: mean_radius=1000000.0 "
            f"(above its maximum {float(x[:, 0].max())!r}))") in outside.reason
