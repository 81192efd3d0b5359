"""How a consume-transform-produce service makes its work final.

Both strategies keep the order "outputs acknowledged, then inputs committed":

- `AtLeastOnce`: flush the producer (every output acknowledged), then commit the consumer
  offsets. A crash between the two repeats work; nothing is lost.
- `ExactlyOnce`: outputs and input offsets go in one Kafka transaction
  (`send_offsets_to_transaction` with the consumer's group metadata, so a zombie instance
  from an older group generation is fenced). Readers with isolation.level=read_committed
  see each output once. `init()` registers the transactional id and opens a transaction;
  `commit()` ends the open transaction and opens the next.

While the broker is away: `AtLeastOnce.commit` tries once and returns False (the caller keeps
its offsets and tries again from its poll loop, which must keep polling); `ExactlyOnce` retries
a few times (each try waits up to `retry_s`), then replaces its producer. Any transaction that
cannot be finished is abandoned (`TransactionAborted`): the caller re-reads from the committed
offsets, and its recovery finds what did commit. librdkafka can wedge inside transactional
calls after a broker restart (issue #5456); blocked calls are reported to readiness through
`health.blocking`, and a wedged producer is replaced by a new one with the same transactional id.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

from confluent_kafka import KafkaError, KafkaException, TopicPartition
from prometheus_client import Counter, Histogram

from services.core.errors import ConfigError, DeliveryFailed, KafkaOperationError, OutputsLost, ProducerInErrorState
from services.core.health import BrokerHealth
from services.core.kafka import CommitRejected, Consumer, Producer, kafka_error, refused_for_good
from services.core.metrics import PRODUCERS_REPLACED

log = logging.getLogger(__name__)

COMMIT_SECONDS = Histogram(
    "rdv_commit_seconds", "How long making work final took (flush + offsets, or a whole transaction commit).",
    ["kind"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)

HELD_WAITS = Counter(
    "rdv_commit_held_waits_total",
    "Times the poll loop waited for a transaction commit because the outputs held during it reached their bound "
    "(64 MiB): the commit runs long (a transaction coordinator away).",
)

# A call still running this many times its own timeout is taken as never returning.
WEDGED_AFTER = 3
# Timed-out transactional calls tried this often before the producer is replaced.
MAX_ATTEMPTS = 3
# Outputs held while a transaction commits, at most (their bytes): past it the loop waits for the
# commit. A commit can run long (a transaction coordinator away: init_transactions waits for it)
# while records keep coming; unbounded, the outputs held meanwhile grew the process without limit.
MAX_HELD_BYTES = 64 * 1024 * 1024


class TransactionAborted(KafkaOperationError):
    """The work since the last commit is void (its transaction aborted, or, at least once, its
    outputs were lost): the inputs must be re-read from the committed offsets."""


class AbortFailed(KafkaOperationError):
    """The open transaction could not be aborted while the service stops (the broker away): it is
    not tried again, and nothing is committed after it; a restart's producer fences it."""


class Committer(Protocol):
    """`commit` may run on any thread and never touches the consumer; `finish` runs on the
    consumer's own thread.

    Why the split: confluent-kafka serialises every call on a consumer handle; a call from a
    second thread waits while the poll loop is inside `consume()`. Inside a rebalance callback
    the loop waits for the commit thread, so a consumer call there would never return."""

    transactional: bool

    def init(self) -> None: ...

    def commit(self, offsets: list[TopicPartition], give_up: Callable[[], bool], group: Any) -> bool: ...

    def finish(self, offsets: list[TopicPartition], wait: bool) -> bool:
        """True: an asynchronous commit was sent, committed only once the consumer's on_commit
        callback says so (StreamService._on_commit); False: nothing more to wait for."""

    def abort(self) -> None: ...


class _Base:
    """What both strategies hold: the clients, how to report waiting, and the broker's health."""

    def __init__(
        self, producer: Producer | None, consumer: Consumer, on_wait: Callable[[str], None], health: BrokerHealth,
        retry_s: float = 5.0, stopping: Callable[[], bool] = lambda: False,
    ):
        self.producer, self.consumer, self.on_wait, self.retry_s = producer, consumer, on_wait, retry_s
        self.health = health
        # Asked between tries of a wait that would otherwise last as long as the broker is away.
        self.stopping = stopping


class AtLeastOnce(_Base):
    transactional = False

    def init(self) -> None:
        return None

    def commit(self, offsets: list[TopicPartition], give_up: Callable[[], bool], group: Any = None) -> bool:
        """Flush (every output acknowledged), once; False if the broker is away (the caller
        keeps the offsets and tries again from its poll loop). The offsets follow in `finish`."""
        try:
            with self.health.blocking():
                if self.producer is not None:
                    self.producer.flush(self.retry_s)
            return True
        except OutputsLost as err:
            # E.g. timed out in a long outage: committing these offsets would lose those outputs.
            raise TransactionAborted(f"outputs not delivered ({err}): re-reading from the committed offsets") from None
        except (DeliveryFailed, KafkaOperationError) as err:
            if not err.retriable:
                raise
            self.on_wait(f"waiting for the broker to take our outputs: {err}")
            return False

    def finish(self, offsets: list[TopicPartition], wait: bool) -> bool:
        """Commit the input offsets whose outputs `commit` flushed (on the consumer's thread).

        From the poll loop asynchronously (the loop never waits; True once sent: the broker's
        answer comes through the consumer's on_commit, and a position it refuses is sent again);
        on revoke and drain synchronously (True once the broker took them)."""
        if not offsets:
            return False
        if not wait:
            try:
                self.consumer.native.commit(offsets=offsets, asynchronous=True)
            except KafkaException as exc:
                log.warning("offset commit not sent (%s); the next one covers it", exc)
                return False
            return True
        try:
            with self.health.blocking():
                self.consumer.commit(offsets)
        except CommitRejected as err:
            # At-least-once: whoever owns these partitions now re-reads from the last commit.
            log.warning("%s; the new owner repeats that work", err)
            return False
        return True

    def abort(self) -> None:
        return None


class ExactlyOnce(_Base):
    transactional = True

    def __init__(
        self, producer: Producer | None, consumer: Consumer, on_wait: Callable[[str], None], health: BrokerHealth,
        retry_s: float = 5.0, stopping: Callable[[], bool] = lambda: False,
    ):
        if producer is None:
            raise ConfigError("exactly-once processing needs a (transactional) producer")
        super().__init__(producer, consumer, on_wait, health, retry_s, stopping)
        self.txn: Producer = producer

    def init(self) -> None:
        """Register the transactional id (aborting a dead predecessor's open transaction).

        Waits as long as the broker is away, unless `stopping()` says the service is stopping
        (then KafkaOperationError: a SIGTERM must end a service even if the broker never returns)."""
        while True:
            try:
                self.txn.native.init_transactions(self.retry_s)
                break
            except KafkaException as exc:
                err = kafka_error(exc)
                if err is None or not err.retriable():
                    raise ConfigError(f"cannot start transactions: {exc}") from None
                if self.stopping():
                    raise KafkaOperationError(f"stopped while waiting for the transaction coordinator: {err.str()}",
                                              retriable=True) from None
                self.on_wait(f"waiting for the transaction coordinator: {err.str()}")
        self.txn.native.begin_transaction()

    def commit(self, offsets: list[TopicPartition], give_up: Callable[[], bool], group: Any = None) -> bool:
        """Commit outputs + offsets atomically and open the next transaction. `group` is the
        consumer's group metadata, taken on the consumer's thread."""
        if offsets:
            if group is None:
                raise ConfigError("a transactional commit of offsets needs the consumer's group metadata")
            self._send_offsets(offsets, group)
        # A timed-out commit may or may not have completed on the broker: only retrying the
        # commit itself is safe (librdkafka makes it idempotent); aborting now could repeat work.
        if not self._retry(lambda: self.txn.native.commit_transaction(self.retry_s), give_up):
            return False
        self.txn.raise_failures()
        self.txn.native.begin_transaction()
        return True

    def _send_offsets(self, offsets: list[TopicPartition], metadata: Any) -> None:
        """Add the input offsets to the transaction; on any failure abort it (safe: nothing is
        committed yet).

        librdkafka may never return from send_offsets_to_transaction, whatever its timeout
        (issue #5456, seen here after a broker restart). The call runs in a helper thread; if it
        has not returned well after its timeout, the producer is replaced by a new one with the
        same transactional id, whose init_transactions fences the wedged one and aborts its
        transaction, and the caller re-reads from the committed offsets.
        """
        outcome: list[BaseException | None] = []
        native = self.txn.native

        def call() -> None:
            try:
                native.send_offsets_to_transaction(offsets, metadata, self.retry_s)
                outcome.append(None)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                outcome.append(exc)

        worker = threading.Thread(target=call, name="rdv-send-offsets", daemon=True)
        with self.health.blocking():
            worker.start()
            worker.join(self.retry_s * WEDGED_AFTER)
        if not outcome:
            self._replace_producer("send_offsets_to_transaction is wedged (librdkafka #5456)")
        try:
            if outcome[0] is not None:
                raise outcome[0]
        except KafkaException as exc:
            err = kafka_error(exc)
            if err is not None and err.fatal():
                self._replace_producer(f"fatal transaction error: {err.str()}")
            self.on_wait(f"could not add offsets to the transaction ({exc}); aborting it")
            if err is None:
                self.abort()
                raise TransactionAborted(f"transaction aborted: {exc}") from None
            raise self._aborted(err) from None

    def _aborted(self, err: KafkaError) -> KafkaOperationError:
        """Abort the failed transaction; what to raise: `TransactionAborted` (re-read and redo), or
        the refusal itself if the broker would refuse the redone outputs again (re-reading would
        meet it for ever). The error may name it, or only a delivery report."""
        # The refused record's delivery report names it and its topic. When the refusal came while
        # the transaction was open and nothing polled since, the report is queued but not served
        # yet (commit_transaction failed at once): served now, before the abort discards it.
        self.txn.poll(0)
        lasting = self.txn.lasting_failure() or refused_for_good(err, "an output of the transaction")
        if lasting is None and self.txn.timed_out and not self.stopping():
            # Aborting and re-reading alone would meet the same timeout every transaction, for
            # ever, if the client itself is stuck (Producer.timed_out): a new one costs little.
            # Not while stopping: nothing is re-read, and the abort below is tried (a review).
            self._replace_producer("an output timed out undelivered", why="timed_out")
        self.abort()
        if lasting is not None:
            return lasting
        return TransactionAborted(f"transaction aborted: {err.str()}")

    def _replace_producer(self, reason: str, why: str = "transaction") -> NoReturn:
        """A fatal transactional error (e.g. the coordinator expired our transaction while the
        broker was down) leaves the producer unusable: librdkafka's remedy is a new instance.
        The new one, with the same transactional id, fences the old; its outputs are aborted.
        `why`: the label of rdv_kafka_producers_replaced_total. Not while the service stops:
        the new one's init would wait for the broker too, past a drain's time (a review measured a
        SIGTERM in a broker outage ending a rendezvous after 44 s, a chart's grace being 30)."""
        if self.stopping():
            raise AbortFailed(f"stopped with the transaction open ({reason}); a restart's producer fences it")
        self.on_wait(f"{reason}: replacing the producer and re-reading from the committed offsets")
        PRODUCERS_REPLACED.labels(why).inc()
        self.txn.renew()
        self.init()
        raise TransactionAborted(f"transaction abandoned ({reason})")

    def _retry(self, action: Callable[[], None], give_up: Callable[[], bool]) -> bool:
        for _attempt in range(MAX_ATTEMPTS):
            try:
                with self.health.blocking():
                    action()
                return True
            except KafkaException as exc:
                err = kafka_error(exc)
                if err is not None and err.fatal():
                    self._replace_producer(f"fatal transaction error: {err.str()}")
                if err is not None and err.txn_requires_abort():
                    raise self._aborted(err) from None
                if err is None or not err.retriable():
                    raise KafkaOperationError(f"transaction failed: {exc}") from None
                self.on_wait(f"transaction waiting for the broker: {err.str()}")
            if give_up():
                return False
            time.sleep(0.2)  # the failed call already waited retry_s or failed fast; don't spin
        # Still timing out: the client may be wedged on a dead coordinator connection even once
        # the broker is back. A new producer is always safe: what was committed stays committed,
        # the rest is aborted, and re-reading + recovery sorts out which was which.
        self._replace_producer(f"transaction still failing after {MAX_ATTEMPTS} tries")

    def finish(self, offsets: list[TopicPartition], wait: bool) -> bool:
        return False  # the offsets were committed inside the transaction

    def abort(self) -> None:
        """Abort the open transaction and open the next (a wedged client is replaced)."""
        for _attempt in range(MAX_ATTEMPTS):
            try:
                with self.health.blocking():
                    self.txn.native.abort_transaction(self.retry_s)
                break
            except KafkaException as exc:
                err = kafka_error(exc)
                if err is not None and err.fatal():
                    self._replace_producer(f"fatal error while aborting: {err.str()}")
                if err is None or not err.retriable():
                    raise KafkaOperationError(f"abort_transaction failed: {exc}") from None
                if self.stopping():  # tried once: the drain's time is out
                    raise AbortFailed(f"stopped while aborting the transaction ({err.str()}); a restart's "
                                      "producer fences it", retriable=True) from None
                self.on_wait(f"abort waiting for the broker: {err.str()}")
        else:
            self._replace_producer(f"abort still failing after {MAX_ATTEMPTS} tries")
        self.txn.discard_failures()
        self.txn.native.begin_transaction()




@dataclass(frozen=True)
class CommitOutcome:
    """How one commit ended: `done` (the positions are committed), or not yet (the broker is
    away: ask again), or `error` (e.g. TransactionAborted: re-read from the committed offsets)."""

    offsets: list[TopicPartition]
    done: bool
    error: BaseException | None = None


class CommitLane:
    """Runs a committer's commits on a thread of their own, so the poll loop never waits for the
    broker: it keeps reading, deciding and answering while earlier work is made final.

    The commit order is unchanged (outputs, then the input offsets they finish); only the waiting
    moves off the loop. Outputs that belong to a transaction go through `produce`: while a
    transactional commit runs (librdkafka refuses produce calls during commit_transaction) they
    are held, and they enter the next transaction as soon as it opens, in order. The positions of
    a commit are taken on the loop (`request`) after the outputs that finish them were produced,
    so a transaction never commits an input whose outputs are not in it or in an earlier one.
    Requests made while a commit runs are coalesced: the newest positions cover older ones.

    The loop learns how commits ended from `outcomes()`. `commit_now` and `abort_now` run on the
    caller's thread once the background commit has finished (revoke, lost, drain).
    """

    def __init__(self, committer: Committer, producer: Producer | None, *, background: bool = True):
        self.committer = committer
        self._producer = producer
        self._background = background
        self._lock = threading.Condition()
        self._held: list[tuple[str, bytes | None, bytes | str | None, int | None, Any]] = []
        self._held_bytes = 0
        self.max_held_bytes = MAX_HELD_BYTES
        self._committing = False
        self._wanted: list[TopicPartition] | None = None
        self._epoch = 0  # discard_outcomes' count: a commit that ran across one keeps no success
        self._group: Any = None
        self._give_up: Callable[[], bool] = lambda: False
        self._outcomes: list[CommitOutcome] = []
        self._closed = False
        self.produced = False  # outputs produced since the last commit request
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(target=self._run, name="rdv-commit", daemon=True)
            self._thread.start()

    @property
    def transactional(self) -> bool:
        return self.committer.transactional

    # -- outputs ---------------------------------------------------------------------------

    def produce(
        self, topic: str, value: bytes | None, key: bytes | str | None = None, partition: int | None = None,
        headers: Any = None,
    ) -> None:
        """Produce an output of the current unit of work (held while a transaction commits)."""
        if self._producer is None:
            raise ConfigError("this service has no producer")
        self.produced = True
        if not self.committer.transactional:
            self._producer.produce(topic, value, key=key, partition=partition, headers=headers)
            return
        # Checked now, not when a held record is released on the commit thread: the caller can
        # still write a smaller record instead (the rendezvous cuts its strings).
        self._producer.check_size(value, key, headers, topic)
        # Under the lock, so a commit cannot begin between the check and the produce call.
        with self._lock:
            if self._committing and self._held_bytes >= self.max_held_bytes:
                self._wait_for_commit()
            if self._committing:
                self._held.append((topic, value, key, partition, headers))
                self._held_bytes += _size(value) + _size(key)
                return
            try:
                self._producer.produce(topic, value, key=key, partition=partition, headers=headers, checked=True)
            except ProducerInErrorState as err:
                # The transaction is void whatever the record: the loop aborts it and re-reads (as
                # for an output held meanwhile). Raised to the caller, the rendezvous dead-lettered
                # and counted the record, in the transaction aborted: after a broker restart, two
                # records counted lost and dead-lettered were both answered (a review).
                self._void(f"an output could not be produced ({err}): re-reading")

    def _wait_for_commit(self) -> None:
        """Under the lock, on the loop: the outputs held hold `max_held_bytes`; wait until the
        running commit has ended (and released them)."""
        log.warning("%d MB of outputs wait for a transaction commit still running: the loop waits for it",
                    self._held_bytes // (1024 * 1024))
        HELD_WAITS.inc()
        while self._committing and not self._closed:
            self._lock.wait(0.5)

    def _release_held(self) -> None:
        """Produce the outputs held during a commit (under the lock). One that cannot be produced
        voids the open transaction: the outcome makes the loop abort it and re-read."""
        if not self._held:
            return
        assert self._producer is not None
        held, self._held, self._held_bytes = self._held, [], 0
        for topic, value, key, partition, headers in held:
            try:
                self._producer.produce(topic, value, key=key, partition=partition, headers=headers, checked=True)
            except KafkaOperationError as err:
                self._void(f"an output held during a commit could not be produced ({err}): re-reading")
                return

    def _void(self, why: str) -> None:
        """(Under the lock) the open transaction is void: its outcome makes the loop abort it and
        re-read from the committed offsets; no commit starts before (`_failure_pending`)."""
        if not self._failure_pending():
            self._outcomes.append(CommitOutcome([], False, TransactionAborted(why)))

    # -- commits ---------------------------------------------------------------------------

    def request(
        self, offsets: list[TopicPartition], give_up: Callable[[], bool] = lambda: False, group: Any = None
    ) -> None:
        """Commit these positions, and every output produced so far, as soon as possible.
        `group`: the consumer's group metadata (transactional), taken on the consumer's thread.
        Nothing is started while a failed commit waits to be settled: after an aborted
        transaction, these positions may cover work whose outputs were aborted with it."""
        if self._failure_pending():
            return
        self.produced = False
        if not self._background:
            self._commit(offsets, give_up, group, record=True)
            return
        with self._lock:
            self._wanted = offsets
            self._give_up = give_up
            self._group = group
            self._lock.notify_all()

    def _failure_pending(self) -> bool:
        with self._lock:  # re-entrant: `_void` asks under it
            return any(o.error is not None for o in self._outcomes)

    def busy(self) -> bool:
        with self._lock:
            return self._committing or self._wanted is not None

    def outcomes(self) -> list[CommitOutcome]:
        """Commits that ended since the last call, oldest first."""
        with self._lock:
            done, self._outcomes = self._outcomes, []
        return done

    def wait_outcomes(self, timeout: float) -> list[CommitOutcome]:
        """Like `outcomes`, but waits up to `timeout` s for at least one (for callers off the loop)."""
        with self._lock:
            self._lock.wait_for(lambda: bool(self._outcomes), timeout)
            done, self._outcomes = self._outcomes, []
        return done

    def _run(self) -> None:
        while True:
            with self._lock:
                while self._wanted is None and not self._closed:
                    self._lock.wait()
                if self._wanted is None:
                    return
                offsets, self._wanted, give_up, group = self._wanted, None, self._give_up, self._group
                self._committing = True
            try:
                self._commit(offsets, give_up, group, record=True)
            except BaseException as exc:  # noqa: BLE001 - a dead lane would stall every later commit
                with self._lock:
                    self._committing = False
                    self._outcomes.append(CommitOutcome(offsets, False, exc))
                    self._lock.notify_all()

    def _commit(
        self, offsets: list[TopicPartition], give_up: Callable[[], bool], group: Any, record: bool = False
    ) -> CommitOutcome:
        """One commit. `record`: its outcome goes to `outcomes()` in the same step that ends
        `busy()`, so the loop never sees the lane idle without the outcome (it would start the
        next commit before settling an abort); any failure is then an outcome, as a dead lane
        would stall every later commit."""
        with self._lock:
            self._committing = True
            epoch = self._epoch
        started = time.perf_counter()
        outcome: CommitOutcome | None = None
        try:
            outcome = CommitOutcome(offsets, self.committer.commit(offsets, give_up, group))
        except (KafkaOperationError, ConfigError) as err:
            outcome = CommitOutcome(offsets, False, err)
        except BaseException as exc:
            if not record:
                raise
            outcome = CommitOutcome(offsets, False, exc)
        finally:
            COMMIT_SECONDS.labels("transaction" if self.committer.transactional else "offsets").observe(
                time.perf_counter() - started)
            with self._lock:
                self._committing = False
                if record and outcome is not None and (outcome.error is not None or epoch == self._epoch):
                    self._outcomes.append(outcome)
                if self.committer.transactional:
                    self._release_held()  # into the next transaction: after this one's outcome
                self._lock.notify_all()
        return outcome

    def failed_unsettled(self, timeout: float) -> bool:
        """For a caller off the loop that commits by itself while the loop cannot run (a model
        worker's watchdog): whether a commit failed and the loop has not settled it, or one still
        runs after `timeout` s. Its flush may have taken the delivery failures of outputs whose
        inputs are not committed yet (the producer hands each to one flush only): committing any
        later position of their partitions would lose those outputs."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._committing or self._wanted is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return True
                self._lock.wait(min(left, 0.1))
            return any(o.error is not None for o in self._outcomes)

    def _wait_idle(self) -> None:
        with self._lock:
            while self._committing or self._wanted is not None:
                if self._thread is not None and not self._thread.is_alive():
                    raise KafkaOperationError("the commit thread ended unexpectedly")
                self._lock.wait(0.1)

    def finish(self, outcome: CommitOutcome) -> bool:
        """On the consumer's thread, after a background commit ended well (see `Committer`): True
        when its offsets were sent asynchronously, committed once acknowledged."""
        return self.committer.finish(outcome.offsets, wait=False)

    def commit_now(self, offsets: list[TopicPartition], give_up: Callable[[], bool], group: Any = None) -> bool:
        """Commit on the caller's thread, the consumer's (after any background commit ended);
        raises its error. Outcomes not yet settled are superseded by this commit: settling them
        later could commit older positions of partitions given up meanwhile. A failed one among
        them commits nothing: `offsets` may cover work whose outputs it took with it, and
        committing them would lose those outputs for good. An aborted transaction is raised; any
        other failure (outputs refused for good) is kept for the loop to settle, which stops the
        service with it, and raised as the transaction it voided."""
        self._wait_idle()
        with self._lock:
            unsettled, self._outcomes = self._outcomes, []
        # An abort that failed while stopping is raised as it is: said as refused outputs, the
        # service aborted once more, 5 s of a drain in a broker outage (a review).
        aborted = next((o.error for o in unsettled if isinstance(o.error, (TransactionAborted, AbortFailed))), None)
        if aborted is not None:
            raise aborted
        failed = next((o for o in unsettled if o.error is not None), None)
        if failed is not None:
            with self._lock:
                self._outcomes.insert(0, failed)
            raise TransactionAborted(f"outputs were refused ({failed.error})")
        outcome = self._commit(offsets, give_up, group)
        if outcome.error is not None:
            raise outcome.error
        if outcome.done and not self.committer.transactional:
            # Committed only if the broker took the offsets: a rejected commit (the group moved on)
            # was reported committed, and a handler kept what its re-read then counted twice (a review).
            return self.committer.finish(offsets, wait=True)
        return outcome.done

    def discard_outcomes(self) -> None:
        """Partitions were lost: a commit asked for and not started is dropped, every outcome goes,
        and so does the success of one running now (`_epoch`): finished after, its outcome, settled
        by the loop, committed the lost partitions' offsets (a review). Not waited for: this runs
        in the consumer's rebalance callback, and a flush may wait long on a broker away. A failure
        is kept: its refused outputs may be of partitions still owned."""
        with self._lock:
            self._wanted = None
            self._epoch += 1
            self._outcomes = [outcome for outcome in self._outcomes if outcome.error is not None]

    def abort_now(self) -> None:
        """Abort the open transaction: what it holds, and what is held for it, is discarded."""
        self._wait_idle()
        with self._lock:
            self._held.clear()
            self._held_bytes = 0
        self.committer.abort()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)


def _size(data: bytes | str | None) -> int:
    return len(data) if data is not None else 0
