"""The reply router without a broker: which return addresses get an answer, that the first
answers to the deployment's replies topic do not wait, that an expired verdict never stalls
answers to a topic known to exist, and that every reply is counted on its receipt until it is
acknowledged or dropped (a request's offset waits for that)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from services.core.settings import Topics
from services.rendezvous import replies as r
from services.rendezvous.mailbox import Receipt
from tests.integration.harness import wait_until

TOPICS = Topics.from_prefix("t.")


@dataclass
class Broker:
    """Partition counts by topic (0: missing), the questions asked, and the replies written."""

    partitions: dict[str, int]
    asked: list[str] = field(default_factory=list)
    sent: list[tuple[str, int | None, bytes]] = field(default_factory=list)
    acks: list[Callable[[], None]] = field(default_factory=list)
    headers: list[r.Headers] = field(default_factory=list)

    batches: list[list[str]] = field(default_factory=list)

    def counts(self, topics: list[str]) -> dict[str, int]:
        self.asked.extend(topics)
        self.batches.append(list(topics))
        return {topic: self.partitions.get(topic, 0) for topic in topics}

    def send(
        self, topic: str, partition: int | None, key: bytes, _value: bytes, headers: r.Headers, done: Callable[[], None]
    ) -> None:
        self.sent.append((topic, partition, key))
        self.headers.append(headers)
        self.acks.append(done)

    def acknowledge(self) -> None:
        for done in self.acks:
            done()
        self.acks.clear()


def router(broker: Broker) -> r.ReplyRouter:
    return r.ReplyRouter(broker.send, {}, r.ReplyRules(TOPICS), partition_counts=broker.counts)


def settle(router_: r.ReplyRouter) -> None:
    """Until every question was answered by the helper thread and its verdict taken."""

    def answered() -> bool:
        router_.poll()
        return router_.checking == 0

    wait_until(answered, 10, "the topic checks")


def test_the_replies_topic_checked_at_start_takes_the_first_answer_at_once() -> None:
    broker = Broker({TOPICS.replies: 4})
    out = router(broker)
    out.check_now(TOPICS.replies)
    settle(out)
    receipt = Receipt()
    out.send(TOPICS.replies, None, b"r1", b"answer", None, receipt)
    assert broker.sent == [(TOPICS.replies, None, b"r1")]
    assert receipt.unacked == 1 and out.unacked == 1
    broker.acknowledge()
    assert receipt.settled and out.unacked == 0


def test_an_unchecked_topic_holds_its_replies_until_the_verdict_then_delivers_or_drops() -> None:
    broker = Broker({"client-a": 2})
    out = router(broker)
    kept, lost, bad = Receipt(), Receipt(), Receipt()
    out.send("client-a", 1, b"r1", b"v", [("rdv-inputs", b"digest")], kept)
    out.send("missing", None, b"r2", b"v", None, lost)
    out.send("client-a", 7, b"r3", b"v", None, bad)
    assert broker.sent == [] and out.unacked == 3
    settle(out)
    assert broker.sent == [("client-a", 1, b"r1")] and broker.headers == [[("rdv-inputs", b"digest")]]
    assert lost.settled and bad.settled and not kept.settled  # dropped ones are released at once
    broker.acknowledge()
    assert kept.settled and out.unacked == 0


def test_an_internal_topic_gets_no_reply_and_nothing_to_wait_for() -> None:
    broker = Broker({TOPICS.control: 4})
    out = router(broker)
    receipt = Receipt()
    out.send(TOPICS.control, None, b"r", b"v", None, receipt)
    assert broker.sent == [] and broker.asked == [] and receipt.settled and out.unacked == 0


@pytest.mark.parametrize("topic", ["bad\x00name", "spaces in name", "ünïcode", ".", "..", "x" * 250, ""])
def test_a_topic_name_kafka_would_refuse_gets_no_reply_and_no_question(topic: str) -> None:
    broker = Broker({topic: 4})
    out = router(broker)
    receipt = Receipt()
    out.send(topic, None, b"r", b"v", None, receipt)
    assert broker.sent == [] and broker.asked == [] and receipt.settled and out.unacked == 0


def test_a_question_that_fails_unexpectedly_counts_the_topic_as_missing_and_the_loop_goes_on() -> None:
    def refusing(topics: list[str]) -> dict[str, int]:
        raise ValueError("embedded null character")

    broker = Broker({})
    out = r.ReplyRouter(broker.send, {}, r.ReplyRules(TOPICS), partition_counts=refusing)
    receipt = Receipt()
    out.send("client-a", 0, b"r", b"v", None, receipt)
    settle(out)  # poll() does not raise
    assert broker.sent == [] and receipt.settled and out.unacked == 0


def test_an_expired_verdict_is_checked_again_without_holding_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    broker = Broker({TOPICS.replies: 4})
    out = router(broker)
    monkeypatch.setattr(r, "VERDICT_TTL_S", 0.0)  # a verdict stands until its remembered expiry
    out.check_now(TOPICS.replies)
    settle(out)
    out.send(TOPICS.replies, None, b"r1", b"v", None, Receipt())
    assert broker.sent == [(TOPICS.replies, None, b"r1")]  # delivered at once, on the old verdict
    settle(out)
    assert broker.asked == [TOPICS.replies, TOPICS.replies]  # and asked again in the background


def test_after_a_failed_delivery_the_next_replies_wait_for_a_fresh_verdict_instead_of_being_dropped() -> None:
    broker = Broker({TOPICS.replies: 4})
    out = router(broker)
    out.check_now(TOPICS.replies)
    settle(out)
    out.forget(TOPICS.replies)  # e.g. every reply in flight timed out during a long outage
    receipt = Receipt()
    out.send(TOPICS.replies, 2, b"r1", b"v", None, receipt)
    assert broker.sent == [] and not receipt.settled  # held, not dropped
    settle(out)
    assert broker.sent == [(TOPICS.replies, 2, b"r1")] and broker.asked == [TOPICS.replies, TOPICS.replies]


def test_a_return_address_deleted_and_made_again_is_asked_about_again_within_seconds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A reply failed to it, then found missing, it was remembered missing for 30 s: made again at
    once, every reply for those 30 s was dropped, those to requests sent after it was back too (a
    review). A topic no reply failed to stays missing for the verdict's 30 s: a client may name a
    new missing one at every request, and each question is a metadata request."""
    broker = Broker({"client-a": 2})
    out = router(broker)
    out.check_now("client-a")
    settle(out)
    monkeypatch.setattr(r, "RECHECK_S", 0.0)
    broker.partitions["client-a"] = 0  # deleted: the replies in flight fail
    out.forget("client-a")
    lost, kept, never = Receipt(), Receipt(), Receipt()
    out.send("client-a", None, b"r1", b"v", None, lost)
    settle(out)
    assert lost.settled and broker.sent == []  # missing: dropped
    broker.partitions["client-a"] = 2  # made again
    out.send("client-a", None, b"r2", b"v", None, kept)
    settle(out)
    assert broker.sent == [("client-a", None, b"r2")] and not kept.settled
    out.send("other", None, b"r3", b"v", None, Receipt())
    settle(out)
    broker.partitions["other"] = 2
    out.send("other", None, b"r4", b"v", None, never)
    assert never.settled and broker.asked.count("other") == 1  # missing for the verdict's 30 s


def test_a_question_the_broker_could_not_answer_keeps_the_replies_and_is_asked_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answers = iter([r.UNKNOWN, r.UNKNOWN, 3])
    asked: list[str] = []

    def flaky(topics: list[str]) -> dict[str, int]:
        asked.extend(topics)
        return {topic: next(answers) for topic in topics}

    broker = Broker({})
    monkeypatch.setattr(r, "RECHECK_S", 0.0)
    out = r.ReplyRouter(broker.send, {}, r.ReplyRules(TOPICS), partition_counts=flaky)
    receipt = Receipt()
    out.send("client-a", 1, b"r1", b"v", None, receipt)
    out.send("client-a", 2, b"r2", b"v", None, Receipt())  # asked once for both, not once per reply
    def delivered() -> bool:
        out.poll()
        return bool(broker.sent)

    wait_until(delivered, 10, "the third question's answer")
    assert asked == ["client-a"] * 3
    assert broker.sent == [("client-a", 1, b"r1"), ("client-a", 2, b"r2")]
    assert not receipt.settled and out.unacked == 2  # delivered, awaiting acknowledgement


def test_by_default_a_return_address_is_the_replies_topic_or_one_named_after_it() -> None:
    """The whole prefix was not narrow enough: `rdv.staging.control`, another deployment's control
    topic, is under `rdv.` (the review of this change)."""
    from services.rendezvous.settings import RendezvousSettings

    rules = r.ReplyRules(Topics.from_prefix("rdv."), RendezvousSettings().reply_topic_pattern())
    assert [rules.refusal(t) for t in ("rdv.replies", "rdv.replies.alice", "rdv.staging.control", "rdv.repliesx",
                                       "staging.control")] == [None, None, "not_allowed", "not_allowed", "not_allowed"]


def test_a_topic_is_missing_only_when_the_broker_says_so_and_a_passing_error_is_asked_again() -> None:
    """A leader being elected read as "missing" dropped every reply to the topic for 30 s, the
    deployment's own replies topic included, their requests committed as answered (a review). A
    topic the principal may not describe was called missing (a review): it is refused, said so."""
    from confluent_kafka import KafkaError

    def described(partitions: int | None = None, error: int | None = None) -> object:
        """The broker's answer for one topic, as describe_each gives it."""
        if error is None:
            return type("Description", (), {"partitions": list(range(partitions or 0))})()
        return KafkaError(error)

    assert r.partition_count(described(4)) == 4
    assert r.partition_count(described(error=KafkaError.UNKNOWN_TOPIC_OR_PART)) == 0
    assert r.partition_count(described(error=KafkaError.TOPIC_AUTHORIZATION_FAILED)) == r.REFUSED
    assert r.partition_count(described(error=KafkaError.LEADER_NOT_AVAILABLE)) == r.UNKNOWN
    assert r.partition_count(described(error=KafkaError._TIMED_OUT)) == r.UNKNOWN


def test_a_return_address_the_rendezvous_may_not_describe_is_refused_as_such(caplog: pytest.LogCaptureFixture) -> None:
    broker = Broker({})
    out = r.ReplyRouter(broker.send, {}, r.ReplyRules(TOPICS),
                        partition_counts=lambda topics: dict.fromkeys(topics, r.REFUSED))
    before = r.m.REPLY_ERRORS.labels("not_authorized")._value.get()
    receipt = Receipt()
    out.send("t.replies.alice", None, b"r", b"v", None, receipt)
    settle(out)
    assert broker.sent == [] and receipt.settled
    assert r.m.REPLY_ERRORS.labels("not_authorized")._value.get() == before + 1
    said = [rec.getMessage() for rec in caplog.records if "t.replies.alice" in rec.getMessage()]
    assert said and "is not the rendezvous' to describe" in said[0] and "does not exist" not in said[0]


def test_a_flood_of_new_return_addresses_is_asked_about_in_batches_so_another_client_s_waits_little(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Asked one topic at a time, 3,000 made-up addresses kept another client's new reply topic
    waiting for minutes (a review). Asked BATCH_MAX at a time, it waits for the batches before it,
    the deployment's own replies topic for none but the one out."""
    monkeypatch.setattr(r, "BATCH_MAX", 10)
    broker = Broker({TOPICS.replies: 4, "t.replies.bob": 2})
    out = router(broker)
    for i in range(35):
        out.send(f"t.replies.made-up{i}", None, b"x", b"v", None, Receipt())
    bob, ours = Receipt(), Receipt()
    out.send("t.replies.bob", None, b"b", b"v", None, bob)
    out.forget(TOPICS.replies)
    out.send(TOPICS.replies, None, b"o", b"v", None, ours)
    settle(out)
    # The first asked alone at once (none was out), the 36 met meanwhile in four more.
    assert [len(batch) for batch in broker.batches] == [1, 10, 10, 10, 6]
    assert broker.batches[1][0] == TOPICS.replies  # first in the next batch, ahead of the flood
    assert "t.replies.bob" in broker.batches[-1]
    assert ("t.replies.bob", None, b"b") in broker.sent and (TOPICS.replies, None, b"o") in broker.sent
    assert broker.asked.count("t.replies.bob") == 1


def test_a_flood_of_missing_return_addresses_neither_forgets_nor_drops_the_deployments_replies(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A client naming more missing topics than verdicts are kept pushed the replies topic's out;
    with the waiting replies at their cap, replies to the deployment's own topic were dropped as
    too_many_unchecked, their requests committed as answered (a review). One warning line said each
    missing topic."""
    monkeypatch.setattr(r, "MAX_TOPICS", 20)
    monkeypatch.setattr(r, "MAX_WAITING", 50)
    broker = Broker({TOPICS.replies: 4})
    out = router(broker)
    out.check_now(TOPICS.replies)
    settle(out)
    for i in range(30):  # more missing topics than verdicts are kept
        out.send(f"t.replies.gone{i}", None, b"x", b"v", None, Receipt())
    settle(out)
    assert out._known(TOPICS.replies) == 4
    warnings = [rec for rec in caplog.records if "does not exist" in rec.getMessage()]
    assert len(warnings) == 1  # and the next one, 30 s on, says how many were held back
    out.forget(TOPICS.replies)  # a failed delivery: its next replies wait for a fresh verdict
    for i in range(50):  # the waiting replies of other topics at their cap
        out.send(f"t.replies.new{i}", None, b"x", b"v", None, Receipt())
    mine = Receipt()
    out.send(TOPICS.replies, 0, b"r1", b"answer", None, mine)
    settle(out)
    assert (TOPICS.replies, 0, b"r1") in broker.sent and mine.unacked == 1


def test_a_batch_that_fails_unexpectedly_is_asked_topic_by_topic_so_one_name_does_not_sink_the_others() -> None:
    """Asked together, one name the client library refuses made every topic of its batch missing
    for 30 s, the deployment's replies topic among them (a review)."""
    broker = Broker({TOPICS.replies: 4, "client-a": 2})

    def counts(topics: list[str]) -> dict[str, int]:
        if "bad" in topics:
            raise ValueError("embedded null character")
        return broker.counts(topics)

    out = r.ReplyRouter(broker.send, {}, r.ReplyRules(TOPICS), partition_counts=counts)
    out.check_now(TOPICS.replies)
    settle(out)
    out.forget(TOPICS.replies)
    lost = Receipt()
    out.send("client-a", None, b"a", b"v", None, Receipt())  # asked at once, alone
    out.send(TOPICS.replies, 1, b"o", b"v", None, Receipt())  # these three asked together
    out.send("bad", None, b"b", b"v", None, lost)
    settle(out)
    assert (TOPICS.replies, 1, b"o") in broker.sent and ("client-a", None, b"a") in broker.sent
    assert lost.settled and not any(topic == "bad" for topic, _, _ in broker.sent)
