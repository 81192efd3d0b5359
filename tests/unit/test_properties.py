"""Properties over generated input (Hypothesis): whatever a careless or hostile client sends,
the pure parts answer with a value or a `BadInput` / `ConfigError` — never another exception,
never a secret in a message."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from services.client.client import make_request
from services.core import kafka_config, redaction
from services.core.codec import codec
from services.core.errors import BadInput, ConfigError
from services.core.requests import request_problem
from services.rendezvous.recovery import Mark

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

names = st.text(min_size=1, max_size=40)
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
epoch_ms = st.integers(min_value=1, max_value=2**53)


@FAST
@given(features=st.dictionaries(names, finite, min_size=1, max_size=20), budget=st.integers(1, 10**7),
       request_id=st.text(min_size=1, max_size=80), created=epoch_ms)
def test_a_request_survives_the_wire_unchanged(
    features: dict[str, float], budget: int, request_id: str, created: int
) -> None:
    requests = codec("request")
    record = make_request(features, budget_ms=budget, reply_topic="r", reply_partition=0,
                          request_id=request_id, created_at=created)
    assert requests.decode(requests.encode(record)) == record


@FAST
@given(data=st.binary(max_size=2048))
def test_any_bytes_decode_to_a_record_or_a_bad_input(data: bytes) -> None:
    requests = codec("request")
    for candidate in (data, requests.header + data):  # random, and random behind a valid header
        try:
            record = requests.decode(candidate)
        except BadInput:
            continue
        assert isinstance(record, dict)


@FAST
@given(good=st.builds(lambda f, c: make_request(f, budget_ms=100, reply_topic=None, reply_partition=None,
                                                created_at=c),
                      st.dictionaries(names, finite, min_size=1, max_size=5), epoch_ms),
       position=st.integers(0, 10_000), byte=st.integers(0, 255))
def test_a_corrupted_request_is_a_bad_input_or_still_a_record(good: dict[str, Any], position: int, byte: int) -> None:
    requests = codec("request")
    data = bytearray(requests.encode(good))
    data[position % len(data)] = byte
    try:
        record = requests.decode(bytes(data))
    except BadInput:
        return
    assert isinstance(record, dict)
    assert request_problem(record) is None or isinstance(request_problem(record), str)


@FAST
@given(record=st.fixed_dictionaries({}, optional={
    "request_id": st.one_of(st.none(), st.text(max_size=10), st.integers()),
    "created_at": st.one_of(st.none(), st.integers(), st.floats(), st.text(max_size=5)),
    "deadline": st.one_of(st.none(), st.integers(), st.floats(), st.text(max_size=5)),
    "features": st.one_of(st.none(), st.dictionaries(names, finite, max_size=3)),
    "payload": st.one_of(st.none(), st.just({"content_type": "x", "data": b""})),
}))
def test_request_problem_names_a_problem_or_accepts_only_a_sound_request(record: dict[str, Any]) -> None:
    problem = request_problem(record)
    if problem is None:
        assert record["request_id"] and isinstance(record["created_at"], int) and record["created_at"] > 0
        assert isinstance(record.get("deadline", 0), int) and record.get("deadline", 0) >= 0
        assert record.get("features") or record.get("payload") is not None
    else:
        assert isinstance(problem, str) and "\n" not in problem


SECRET_KEYS = st.sampled_from(["sasl.password", "sasl.pasword", "ssl.key.password", "sasl.jaas.config",
                               "sasl.oauthbearer.client.secret", "Password", "my.token"])
secret_values = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=6, max_size=24).map(
    lambda v: f"Zq{v}")


@FAST
@given(key=SECRET_KEYS, value=secret_values, separator=st.sampled_from(["=", ":", " ", ",", "=="]),
       glue=st.sampled_from(["", ",security.protocol=SASL_SSL", ",sasl.username=u"]))
def test_a_secret_never_appears_in_an_error_or_a_log_line(key: str, value: str, separator: str, glue: str) -> None:
    item = f"{key}{separator}{value}{glue}"
    redaction.forget_all()  # the process' registry: each value added recompiles its pattern
    try:
        config = kafka_config.parse([item])
    except ConfigError as err:
        assert value not in str(err)
        return
    assert value not in repr(kafka_config.masked(config))


@FAST
@given(shown=st.sampled_from(["security.protocol=SASL_SSL", "client.id=me", "acks=all"]),
       glue=st.sampled_from([";", " ", ",", "; ", "\t"]), key=SECRET_KEYS, value=secret_values)
def test_a_secret_glued_after_a_shown_setting_never_appears(shown: str, glue: str, key: str, value: str) -> None:
    """`security.protocol=SASL_SSL;sasl.password=x` in one flag: the allow-listed key's value was
    shown whole, in the refusal and in the start-up log (a review)."""
    redaction.forget_all()  # the process' registry: each value added recompiles its pattern
    try:
        config = kafka_config.parse([f"{shown}{glue}{key}={value}"])
    except ConfigError as err:
        assert value not in str(err)
        return
    assert value not in repr(kafka_config.masked(config))
    assert value not in kafka_config.describe_refusal(f'Invalid value "{next(iter(config.values()))}" for x', config)


@FAST
@given(text=st.one_of(st.none(), st.text(max_size=60)))
def test_a_commit_mark_decodes_or_is_ignored(text: str | None) -> None:
    mark = Mark.decode(text)
    if mark is not None:  # only what names both outputs' offsets, each a whole number from 0
        assert text is not None and mark.answers >= 0 and mark.log >= 0
        fields = dict(item.split("=", 1) for item in text.split(";", 2))  # the id last, whole
        assert (int(fields["a"]), int(fields["l"]), fields.get("t", "")) == (mark.answers, mark.log, mark.txn)
        assert Mark.decode(mark.encode()) == mark


@FAST
@given(answers=st.integers(0, 2**62), log=st.integers(0, 2**62), txn=st.text(max_size=40))
def test_a_commit_mark_round_trips(answers: int, log: int, txn: str) -> None:
    """Any transactional id, ';' and '=' in it too: Kafka allows them in a group's name (a review:
    a ';' made every mark unreadable)."""
    assert Mark.decode(Mark(answers, log, txn).encode()) == Mark(answers, log, txn)


@pytest.mark.parametrize(("text", "mark"), [
    ("a=1;l=2", Mark(1, 2, "")),  # written before marks named their transaction
    ("a=7;l=9;t=rdv-1", Mark(7, 9, "rdv-1")),
    ("a=1;l=2;t=team;prod-pod-0", Mark(1, 2, "team;prod-pod-0")),  # the group's name may hold a ';'
    ("a=x;l=2;t=", None), ("garbage", None), ("a=-1;l=2;t=", None), ("l=2;t=", None),
])  # fmt: skip
def test_marks_examples(text: str, mark: Mark | None) -> None:
    assert Mark.decode(text) == mark


@FAST
@given(data=st.binary(max_size=512))
@example(data=codec("schedule").encode({"name": "default", "version": 3, "models": ["a", "b"], "waits_ms": {},
                                        "default_deadline_ms": 200, "traffic": None, "effective_at": 0,
                                        "created_at": 0, "comment": ""})[10:])  # a valid one's body
def test_any_control_record_is_a_schedule_or_a_bad_input(data: bytes) -> None:
    from services.control.schedule import Schedule
    from services.control.topic import decode_schedule, encode_schedule
    from services.core.codec import codec as get_codec

    for candidate in (data, get_codec("schedule").header + data):
        try:
            schedule = decode_schedule(candidate)
        except BadInput:
            continue
        assert isinstance(schedule, Schedule) and schedule.models  # a schedule names a model at least
        assert decode_schedule(encode_schedule(schedule)) == schedule


flag_text = st.one_of(
    st.text(max_size=40),
    st.from_regex(r"\A(offset:)?[0-9\u00b2\u0663]{1,400}(\.[0-9]{1,3})?(ms|s|m|h|d)?\Z"),
)


@FAST
@given(text=flag_text)
@example(text="0s")
@example(text="offset:12")
def test_range_flags_parse_or_say_why(text: str) -> None:
    from services.core.ranges import OffsetBound, TimeBound, parse_bound, parse_duration_ms

    try:
        duration = parse_duration_ms(text)
    except ConfigError as err:
        assert "--since" in str(err)
    else:
        assert isinstance(duration, int) and duration > 0
    try:
        bound = parse_bound(text, "--from")
    except ConfigError as err:
        assert "--from" in str(err)
    else:
        assert isinstance(bound, TimeBound | OffsetBound)


@FAST
@given(value=st.text(max_size=30))
def test_a_numeric_flag_is_a_number_in_bounds_or_one_error_line(value: str) -> None:
    from services.core.settings import from_namespace
    from services.rendezvous.settings import RendezvousSettings

    try:
        settings = from_namespace(RendezvousSettings, None, deadline_ms=value, models="champion")
    except ConfigError as err:
        assert "\n" not in str(err)
        return
    assert isinstance(settings.deadline_ms, int) and settings.deadline_ms > 0
