"""score_brake.py: scores wait while their requests lag and orphans fill half the budget; and the
rendezvous applying it to its consumer (service.py `_brake_scores`) with stand-in consumer calls."""

from __future__ import annotations

from types import SimpleNamespace

from confluent_kafka import TopicPartition

from services.rendezvous.score_brake import ScoreBrake
from services.rendezvous.service import Rendezvous
from services.rendezvous.settings import RendezvousSettings
from tests.unit.test_join import T0, request, score
from tests.unit.test_rendezvous_intake import Consumer

LAG_FROM = 50  # as --max-batch: a lag one poll takes is a fetch in flight, not a backlog
MAX_HELD_BYTES = 1_000_000


def _brake(orphans: dict[int, int], behind: set[int], free: bool = False, brake: ScoreBrake | None = None,
           lag: int = 1_000, held_bytes: int = 0) -> tuple[ScoreBrake, set[int], set[int]]:
    """`behind`: the partitions whose requests lag by `lag` records (the others by none)."""
    brake = brake or ScoreBrake(max_orphans=100, lag_from=LAG_FROM)
    pause, resume = brake.decide(sum(orphans.values()), held_bytes / MAX_HELD_BYTES, lambda: orphans,
                                 lambda p: lag if p in behind else 0, free)
    return brake, pause, resume


def test_below_half_the_budget_nothing_waits() -> None:
    brake, pause, resume = _brake({0: 49}, behind={0})
    assert (pause, resume, brake.held) == (set(), set(), set())


def test_from_half_the_budget_the_partitions_whose_requests_lag_wait() -> None:
    # 1: orphans but its requests are caught up (forged or stray scores: the drop rule's);
    # 2: requests lag but no orphans there (its scores are not ahead).
    brake, pause, resume = _brake({0: 30, 1: 20, 3: 5}, behind={0, 2, 3})
    assert pause == {0, 3} and resume == set() and brake.held == {0, 3}


def test_from_half_the_byte_budget_the_partitions_whose_requests_lag_wait_too() -> None:
    """A few orphans with long labels or errors fill the bytes first; they flow again below a quarter."""
    brake, pause, _ = _brake({0: 5, 1: 5}, behind={0}, held_bytes=MAX_HELD_BYTES // 2 - 1)
    assert pause == set() and brake.held == set()
    brake, pause, _ = _brake({0: 5, 1: 5}, behind={0}, held_bytes=MAX_HELD_BYTES // 2, brake=brake)
    assert pause == {0} and brake.held == {0}
    brake, _, resume = _brake({0: 5, 1: 5}, behind={0}, held_bytes=MAX_HELD_BYTES // 4, brake=brake)
    assert resume == set() and brake.held == {0}
    brake, _, resume = _brake({0: 5, 1: 5}, behind={0}, held_bytes=MAX_HELD_BYTES // 4 - 1, brake=brake)
    assert resume == {0} and brake.held == set()


def test_a_lag_one_poll_takes_is_not_a_backlog() -> None:
    """Live, a requests partition often has a fetched record not read yet."""
    brake, pause, _ = _brake({0: 60}, behind={0}, lag=LAG_FROM - 1)
    assert pause == set() and brake.held == set()
    assert _brake({0: 60}, behind={0}, lag=LAG_FROM)[1] == {0}


def test_a_held_partition_whose_orphans_are_gone_flows_again() -> None:
    """Its requests still lag, but nothing of it waits: held, its requests would wait for scores."""
    brake, _, _ = _brake({0: 45, 1: 5}, behind={0, 1})
    brake, pause, resume = _brake({0: 45}, behind={0, 1}, brake=brake)
    assert (pause, resume, brake.held) == (set(), {1}, {0})


def test_held_scores_flow_again_below_a_quarter_or_once_their_requests_are_caught_up() -> None:
    brake, _, _ = _brake({0: 30, 1: 30}, behind={0, 1})
    brake, pause, resume = _brake({0: 20, 1: 10}, behind={0}, brake=brake)  # 1 caught up; 30 >= 25 keeps 0
    assert (pause, resume, brake.held) == (set(), {1}, {0})
    brake, pause, resume = _brake({0: 24}, behind={0}, brake=brake)
    assert (pause, resume, brake.held) == (set(), {0}, set())


def test_between_a_quarter_and_a_half_held_scores_keep_waiting_and_no_new_partition_is_held() -> None:
    brake, _, _ = _brake({0: 60}, behind={0, 1})
    brake, pause, resume = _brake({0: 30, 1: 10}, behind={0, 1}, brake=brake)
    assert (pause, resume, brake.held) == (set(), set(), {0})


def test_when_every_open_request_needs_its_scores_nothing_is_held() -> None:
    brake, _, _ = _brake({0: 60}, behind={0})
    brake, pause, resume = _brake({0: 60}, behind={0}, free=True, brake=brake)
    assert (pause, resume, brake.held) == (set(), {0}, set())
    assert _brake({0: 60}, behind={0}, free=True)[1:] == (set(), set())


def test_partitions_given_up_are_forgotten() -> None:
    brake, _, _ = _brake({0: 30, 1: 30}, behind={0, 1})
    brake.forget({1})
    assert brake.held == {0}


class Native:
    """position() and the cached watermarks of a consumer that read `read` of `ends` (-1001 for a
    partition no fetch has reported yet, as librdkafka)."""

    def __init__(self, ends: dict[int, int], read: dict[int, int], low: int = 0):
        self.ends, self.read, self.low = ends, read, low

    def get_watermark_offsets(self, tp: TopicPartition, cached: bool = False) -> tuple[int, int]:
        assert cached  # asked every turn of the loop while scores wait: never a broker round trip
        return self.low, self.ends[tp.partition]

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self.read.get(tp.partition, -1001)) for tp in partitions]


def _service(ends: dict[int, int], read: dict[int, int]) -> tuple[Rendezvous, Consumer]:
    service = Rendezvous(RendezvousSettings(max_orphans=10, max_batch=10, models=("champion",)))
    requests, scores = service.topics.requests, service.topics.scores
    consumer = Consumer([TopicPartition(t, p) for t in (requests, scores) for p in range(4)])
    consumer.native = Native(ends, read)  # type: ignore[attr-defined]
    service._ctx = SimpleNamespace(consumer=consumer, draining=False)  # type: ignore[assignment]
    return service, consumer


def test_the_rendezvous_pauses_the_scores_of_a_partition_whose_requests_it_has_not_read() -> None:
    # Partition 0: 100 requests written, 40 read. Partition 1: every request read.
    service, consumer = _service(ends={0: 100, 1: 50}, read={0: 40, 1: 50})
    for i in range(4):
        service.join.on_score(score(f"a{i}", "champion", T0, partition=0))
        service.join.on_score(score(f"b{i}", "champion", T0, partition=1))

    service._brake_scores()

    assert consumer.paused == {(service.topics.scores, 0)}
    consumer.native.read[0] = 100  # type: ignore[attr-defined]
    service._brake_scores()
    assert consumer.paused == set()


def test_a_requests_partition_read_from_its_start_lags_before_its_first_record_is_read() -> None:
    """A backlog read from the start: its scores may all be fetched before its first request."""
    service, consumer = _service(ends={0: 100, 1: 0}, read={})
    for i in range(4):
        service.join.on_score(score(f"a{i}", "champion", T0, partition=0))
        service.join.on_score(score(f"b{i}", "champion", T0, partition=1))

    service._brake_scores()

    assert consumer.paused == {(service.topics.scores, 0)}


def test_held_scores_flow_again_when_request_intake_pauses() -> None:
    """A full mailbox table pauses requests: the open ones then need their scores to finish."""
    service, consumer = _service(ends={0: 100}, read={0: 1})
    for i in range(6):
        service.join.on_score(score(f"a{i}", "champion", T0, partition=0))
    service._brake_scores()
    assert consumer.paused == {(service.topics.scores, 0)}

    service._paused = True
    service._brake_scores()

    assert consumer.paused == set()


def test_scores_of_a_partition_being_taken_over_are_left_to_the_takeover() -> None:
    service, consumer = _service(ends={0: 100}, read={0: 1})
    for i in range(6):
        service.join.on_score(score(f"a{i}", "champion", T0, partition=0))
    service._brake_scores()
    pending = TopicPartition(service.topics.scores, 0)
    service.takeover._pending = [TopicPartition(service.topics.requests, 0), pending]
    service._ctx.draining = True  # type: ignore[union-attr]

    service._brake_scores()

    assert consumer.paused == {(service.topics.scores, 0)}  # still paused: the takeover resumes it
    assert service._brake.held == set()


def test_an_unknown_log_start_counts_from_offset_zero() -> None:
    service, _ = _service(ends={0: 100}, read={})
    service._ctx.consumer.native.low = -1001  # type: ignore[union-attr]
    assert service._requests_lag(0) == 100
    service._ctx.consumer.native.read[0] = 90  # type: ignore[union-attr]
    assert service._requests_lag(0) == 10


class Produced:
    """The reply producer's produce(), recorded: which scores partitions were asked for a clock record."""

    def __init__(self) -> None:
        self.partitions: list[int] = []

    def produce(self, _topic: str, _value: None, partition: int, headers: list[tuple[str, bytes]]) -> None:
        self.partitions.append(partition)


def test_no_clock_record_is_asked_for_on_a_partition_whose_scores_are_held() -> None:
    """Mailboxes long past their deadline wait on partitions 0 and 1; 0's scores are held."""
    service, _consumer = _service(ends={0: 100, 1: 100}, read={0: 100, 1: 100})
    service.join.on_request(request("r0", partition=0))
    service.join.on_request(request("r1", partition=1))
    service._brake.held = {0}
    produced = Produced()
    service._fast = produced  # type: ignore[assignment]

    service._ask_for_clock_records()

    assert produced.partitions == [1]
