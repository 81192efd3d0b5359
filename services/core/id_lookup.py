"""Schema-registry ids to writer schemas: one HTTP call at a time, off the caller's thread.

`IdLookup` is what a codec asks (codec.py `read_registry_ids`); wire.py gives each record type of
a process one, sharing the registry's outage and its verdict on 403s (`Access`) between them.

How long a lookup is waited for depends on who asks. A command (a report, `send`) waits for the
registry's answer, up to its timeout. A service's poll loop (schema_wait.py, within
`loop_patience`) waits at most `LoopWaits.per_second_s` of each second over all its lookups: the
call goes on in the background and its record waits, re-read a second later, when the answer is
there. Before, each lookup held the loop, every partition of it, up to the timeout (6 s for a
registry that hangs), and a client writing records with made-up ids (up to 20 lookups a second)
stalled it by 20 round trips a second: on a registry 50 ms away, every deadline (a review).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from concurrent.futures import wait as wait_for
from contextvars import ContextVar
from typing import Any, TypeVar

from services.core.errors import BadInput, BrokerError, DecodeFailed, LookupsSpent
from services.core.futures import in_thread
from services.core.rate_limit import PerSecond
from services.core.registry import UNUSABLE, Outage, RegistryError, SchemaRegistry

FORBIDDEN = 403
COMMAND_WAIT_S = 60.0  # how long a command reading history waits for the registry, over all its records
COMMAND_RETRY_S = 0.5
T = TypeVar("T")
LOOP_WAIT_PER_S = 0.1  # a tenth of a poll loop's time at most, waiting on the registry
_PROBE = -1  # the id of the call out for `Access`' question (no schema id is negative)
ANSWERS_KEPT = 256  # answers of calls whose id has not asked again yet
ANSWER_KEPT_S = 10.0  # how long such an answer stands (its record is read again within a second or two)
TURNS_KEPT = 1024  # ids waiting their turn for a call


class LoopWaits:
    """How long a poll loop may wait on the registry within each second, over all its lookups."""

    def __init__(self, per_second_s: float = LOOP_WAIT_PER_S, clock: Callable[[], float] = time.monotonic):
        self.per_second_s = per_second_s
        self._clock = clock
        self._second = -math.inf
        self._waited = 0.0

    def left(self) -> float:
        now = self._clock()
        if now - self._second >= 1.0:
            self._second, self._waited = now, 0.0
        return max(0.0, self.per_second_s - self._waited)

    def waited(self, seconds: float) -> None:
        self._waited += seconds


_PATIENCE: ContextVar[LoopWaits | None] = ContextVar("rdv_registry_patience", default=None)


@contextlib.contextmanager
def loop_patience(waits: LoopWaits) -> Iterator[None]:
    """Lookups made in this block (on this thread) wait within `waits`, not for the whole answer."""
    token = _PATIENCE.set(waits)
    try:
        yield
    finally:
        _PATIENCE.reset(token)


class Access:
    """Tells a 403 for one schema id apart: the id's own (a registry that checks access per
    subject, RBAC, may refuse this service one subject's schemas and give it others) or the
    registry's refusal of these credentials for now (rotated, a proxy). It asks for something the
    credentials were given before: an id read earlier, else the list of subjects. Granted, the 403
    is the id's; refused too, the registry's. A verdict stands `quiet_s`, so a flood of forbidden
    ids costs one such question per period. Shared by a process' record types, as its outage is."""

    def __init__(self, quiet_s: float = 5.0, clock: Callable[[], float] = time.monotonic):
        self.quiet_s = quiet_s
        self._clock = clock
        self.readable: int | None = None  # an id the registry gave us a schema for (the latest)
        self._granted_until = -math.inf
        self._refused_until = -math.inf

    def known(self) -> bool | None:
        """The verdict still standing: True granted, False refused, None to be asked."""
        now = self._clock()
        return True if now < self._granted_until else False if now < self._refused_until else None

    def remember(self, granted: bool) -> None:
        until = self._clock() + self.quiet_s
        self._granted_until, self._refused_until = (until, -math.inf) if granted else (-math.inf, until)


class IdLookup:
    """Schema ids to schemas, fetched from the registry. A failure that is the registry's (down,
    5xx, credentials refused, a redirect or a proxy's page: any answer but its own "not found"),
    an answer not there yet for a poll loop (`loop_patience`), or this process' (more than
    `per_second` fetches, so a flood of records with made-up ids cannot turn the registry into a
    stream of HTTP calls: `LookupsSpent`) is `retriable`: the codec asks again later. The
    registry's own "no such schema" (404 with a 404xx error code), a 403 for an id while it gives
    these credentials other schemas (`Access`), or a schema nobody can read, is the id's: the codec
    remembers it, the first two for a while (`not_found`: codec.py NOT_FOUND_FOR_S), the third for
    good."""

    def __init__(self, registry: SchemaRegistry, per_second: int = 20, outage: Outage | None = None,
                 clock: Callable[[], float] = time.monotonic, access: Access | None = None):
        self.registry = registry
        self.per_second = per_second
        self._clock = clock
        self._budget = PerSecond(per_second, clock)
        self._outage = outage or Outage()
        self._access = access or Access(clock=clock)
        # The call runs on a thread of its own, waited for at most the registry's timeout: the
        # timeout bounds each wait on the socket, and a reply's status line, headers or chunk
        # sizes trickled a byte at a time held the poll loop (every partition) as long as they
        # went on (a review measured 45 s for a 2 s timeout). One call out at a time, kept until
        # it ends even when no longer waited for (no thread piles up beside a stuck one). A daemon
        # thread: one stuck in a trickled reply must not hold the process at its exit.
        self._pending: tuple[int, Future[Any]] | None = None
        # Answers of calls whose id has not asked again since (its record waits to be read
        # again), and the ids turned away while a call was out, in turn: the next call is the
        # longest waiting one's. Dropped, another id's answer was lost, and the partition read
        # first each turn took every free call: a valid new id behind made-up ones never got one.
        self._answered: OrderedDict[int, tuple[float, Future[Any]]] = OrderedDict()
        self._turns: OrderedDict[int, None] = OrderedDict()

    def __call__(self, schema_id: int) -> Mapping[str, Any]:
        call = self._answer_for(schema_id)
        if call is None:
            outage = self._outage.reason()
            if outage is not None:
                raise DecodeFailed(outage, retriable=True)
            call = self._call_for(schema_id)
        if not self._waited(call, schema_id):
            raise DecodeFailed(f"schema id {schema_id}: the registry has not answered yet; asked again later",
                               retriable=True)
        if self._pending is not None and self._pending[1] is call:
            self._pending = None
        try:
            schema: dict[str, Any] = call.result()
        except RegistryError as exc:
            raise self._refusal(schema_id, exc) from None
        self._access.readable = schema_id
        return schema

    def _answer_for(self, schema_id: int) -> Future[Any] | None:
        """The answered call for `schema_id`, if one came back since it was last asked for."""
        self._collect()
        kept = self._answered.pop(schema_id, None)
        return kept[1] if kept is not None and self._clock() - kept[0] <= ANSWER_KEPT_S else None

    def _collect(self) -> None:
        """The call out, once answered, no longer holds the slot: its answer is kept for its id."""
        if self._pending is None or not self._pending[1].done():
            return
        asked, call = self._pending
        self._pending = None
        if asked != _PROBE:  # the probe's verdict is kept by Access
            self._answered[asked] = (self._clock(), call)
            while len(self._answered) > ANSWERS_KEPT:
                self._answered.popitem(last=False)

    def _call_for(self, schema_id: int) -> Future[Any]:
        """A call to wait for `schema_id`'s answer on: the one out for it (within a poll loop's
        patience), or a new one if it is its turn; else `schema_id` waits its turn."""
        if self._pending is not None:
            asked, call = self._pending
            if asked == schema_id and _PATIENCE.get() is not None:
                return call
            self._wait_turn(schema_id)
            raise DecodeFailed(f"schema id {schema_id}: the registry is still answering an earlier lookup; asked "
                               "again later", retriable=True)
        self._spend()
        turn = next(iter(self._turns), schema_id)
        self._turns.pop(turn, None)
        call = self._start(turn, lambda: self.registry.schema(turn))
        if turn != schema_id:
            self._wait_turn(schema_id)
            raise DecodeFailed(f"schema id {schema_id}: the registry is answering an id asked for before it; asked "
                               "again later", retriable=True)
        return call

    def _wait_turn(self, schema_id: int) -> None:
        if schema_id not in self._turns and len(self._turns) < TURNS_KEPT:
            self._turns[schema_id] = None

    def _start(self, asked: int, work: Callable[[], Any]) -> Future[Any]:
        call = in_thread(work, "rdv-registry")
        self._pending = (asked, call)
        return call

    def _waited(self, call: Future[Any], schema_id: int) -> bool:
        """Whether `call` has its answer, waited for within the loop's patience, or else up to the
        registry's timeout (and a second): then a retriable `DecodeFailed` while it is still out
        (kept out: the next id is told "still answering", no second thread starts)."""
        patience = _PATIENCE.get()
        if patience is None:
            if wait_for([call], timeout=self.registry.timeout_s + 1.0).done:
                return True
            raise self._refusal(schema_id, RegistryError(f"schema registry {self.registry.url}: no whole answer "
                                                         f"within {self.registry.timeout_s:g} s"))
        started = time.monotonic()
        answered = bool(wait_for([call], timeout=patience.left()).done)
        patience.waited(time.monotonic() - started)
        return answered

    def _refusal(self, schema_id: int, exc: RegistryError) -> DecodeFailed:
        """What the registry's failure to give `schema_id` means for its records."""
        # A 403 held the id's records, and their partition, until access was granted, when the
        # registry refuses this service that one subject alone (a review): it is the id's then.
        if exc.status == FORBIDDEN:
            granted = self._others_granted(schema_id)
            if granted:
                refused = DecodeFailed(f"schema id {schema_id}: {exc}; the registry gives these credentials other "
                                       "schemas, not this one (access per subject?)")
                refused.not_found = True  # asked again after a while: access may be granted meanwhile
                return refused
            if granted is None:  # still asked: the record waits, and the registry is not taken for away
                return DecodeFailed(f"schema id {schema_id}: {exc}; asking the registry whether it refuses this id "
                                    "alone", retriable=True)
        # Only the registry's own "no such schema" (or one nobody can read) is the id's fault.
        # Any other refusal (a redirect, a proxy's 404 page, 407, 5xx) was remembered for the id,
        # and every valid record of it dead-lettered until a restart (a review).
        if not exc.permanent:
            self._outage.record(exc)
            return DecodeFailed(str(exc), retriable=True)
        refused = DecodeFailed(f"schema id {schema_id}: {exc}")
        refused.not_found = exc.status != UNUSABLE  # a schema nobody can read stays unread
        return refused

    def _others_granted(self, forbidden: int) -> bool | None:
        """Whether the registry gives these credentials what it gave them before (see `Access`);
        None while that is being asked (within a poll loop's patience the answer may come later:
        kept when it comes, thrown away it held the record for good; a review)."""
        known = self._access.known()
        if known is not None:
            return known
        self._collect()
        if self._pending is not None:  # the question asked before, or another id's call, still out
            return None
        probe = self._access.readable
        if probe is not None and probe != forbidden:
            call = self._start(_PROBE, lambda: self.registry.schema(probe))
        else:
            call = self._start(_PROBE, self.registry.subjects)
        call.add_done_callback(lambda done: self._access.remember(done.exception() is None))
        try:
            if not self._waited(call, forbidden):
                return None
        except DecodeFailed:  # no whole answer in time: the registry's trouble
            return False
        self._pending = None
        granted = call.exception() is None
        self._access.remember(granted)  # here too: the callback may run after this wait ends
        return granted

    def _spend(self) -> None:
        if not self._budget.spend():
            raise LookupsSpent(f"more than {self.per_second} unseen schema ids in one second; not looked up")


class CommandWaits:
    """How long a command reading history waits on the registry. Over the lookups of the second
    (`LookupsSpent`), `total_s` over all its records: counted per record, a range of records with
    made-up ids paced a replay to 20 records a second for hours (a review). For the registry away,
    `total_s` of one outage, from the first record it failed (a record read since ends it): one
    budget for both, forged ids spent it and then one failed call stopped the command (a review)."""

    def __init__(self, total_s: float = COMMAND_WAIT_S):
        self.total_s = total_s
        self.waited_s = 0.0  # over the lookups of the second, in all
        self.away_since: float | None = None  # the registry away since, this outage

    def left(self) -> float:
        return max(0.0, self.total_s - self.waited_s)


_COMMAND_WAITS = CommandWaits()  # a command is a process: one for it


def decoded_when_readable(decode: Callable[[bytes | None], T], value: bytes | None,
                          waits: CommandWaits | None = None) -> T:
    """`decode(value)` for a command reading history, asked again while it fails *for now* (the
    registry away or slow, the lookups of the second spent): a command has no partition to hold,
    and one that counted such a record as unreadable left valid requests out of its figures, or
    said none was readable, after one failed registry call (a review). How long: `CommandWaits`.
    Past it, a record over the lookups of the second raises its `LookupsSpent` (counted unreadable,
    as before), and the registry still away stops the command with a `BrokerError` that says why.
    A record refused for good raises its `BadInput`."""
    budget = _COMMAND_WAITS if waits is None else waits
    while True:
        started = time.monotonic()
        try:
            decoded = decode(value)
        except BadInput as err:
            if not err.retriable:
                raise
            if isinstance(err, LookupsSpent):
                if budget.left() <= 0:
                    raise
                budget.waited_s += _pause(budget.left())
                continue
            budget.away_since = started if budget.away_since is None else budget.away_since
            if time.monotonic() - budget.away_since >= budget.total_s:
                raise BrokerError(f"the schema registry could not be read for {budget.total_s:g} s: "
                                  f"{err.message}") from None
            _pause(COMMAND_RETRY_S)
            continue
        budget.away_since = None
        return decoded


def _pause(at_most: float) -> float:
    pause = min(COMMAND_RETRY_S, at_most)
    time.sleep(pause)
    return pause
