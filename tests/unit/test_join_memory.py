"""The join's byte budget (`max_held_bytes`): scores not joined yet (orphans', and those of models a
request's schedule does not name) hold at most so many bytes, estimated, whatever forged scores carry;
real requests still get their scores; what is dropped or refused is counted."""

from __future__ import annotations

import random
import tracemalloc

from services.core.score_limits import MAX_ERROR_CHARS, MAX_LABEL_CHARS, MAX_VERSION_CHARS
from services.rendezvous.join import Finished, Join
from services.rendezvous.metrics import ORPHAN_SCORES, SCORES_REFUSED
from services.rendezvous.records import ScoreIn
from tests.unit.test_join import MODELS, T0, decided, make_join, request, score

BUDGET = 1024 * 1024


def _long(chars: int) -> str:
    """A new string of `chars` characters of 4 bytes each (made at run time: never a shared constant)."""
    return chr(0x1F600) * chars


def forged(rid: str, model: str, at: int, partition: int = 0) -> ScoreIn:
    """A score with every string at its limit (score_limits.py)."""
    return ScoreIn(rid, partition, 0, at, model, _long(MAX_VERSION_CHARS), 0.5, _long(MAX_LABEL_CHARS),
                   _long(MAX_ERROR_CHARS))


def _flood(join: Join, orphans: int, partition: int = 0) -> None:
    for i in range(orphans):
        for model in MODELS:
            join.on_score(forged(f"forged-{i}", model, T0 + i, partition))


def _counted(join: Join, metric: object) -> float:
    return join.metrics._counts.get(metric, 0)


def test_a_flood_of_large_forged_orphans_holds_no_more_than_the_budget() -> None:
    """Measured, not only estimated: the memory the join keeps after the flood stays within it."""
    join, _out = make_join(max_held_bytes=BUDGET)
    join.on_request(request("warm-up", at=T0 - 1))  # what the partition's first records make once (its clock...)
    for model in MODELS:
        join.on_score(forged("warm-up", model, T0 - 1))
    assert join.held_bytes == 0 and join.mailboxes == {}
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        _flood(join, 500)
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert join.held_bytes <= BUDGET and kept <= BUDGET
    assert 0 < join.orphans < 500
    assert join.held_bytes >= kept  # the estimate is not below what is held: it bounds memory


def test_orphans_dropped_for_the_budget_are_counted_oldest_first() -> None:
    join, _out = make_join(max_held_bytes=BUDGET)
    _flood(join, 500)
    waiting = join._orphans[0]
    assert _counted(join, ORPHAN_SCORES) == 3 * (500 - len(waiting))
    assert list(waiting)[-1] == "forged-499" and "forged-0" not in waiting


def test_a_real_requests_early_score_survives_a_flood_on_another_partition_and_valid_work_flows() -> None:
    join, out = make_join(max_held_bytes=BUDGET)
    join.on_score(score("early", "champion", T0, partition=1))  # before its request, before the flood
    _flood(join, 500, partition=0)
    join.on_request(request("early", at=T0, partition=1))
    join.on_request(request("later", at=T0 + 600, partition=0))
    join.on_score(score("later", "champion", T0 + 601, partition=0))
    assert decided(out) == {"early": ("OK", "champion", T0), "later": ("OK", "champion", T0 + 601)}


def test_at_the_budget_scores_of_models_a_requests_schedule_does_not_name_are_refused_its_answer_stands() -> None:
    join, out = make_join(max_held_bytes=100_000)
    join.on_request(request("r", budget=60_000))
    for i in range(40):
        join.on_score(forged("r", f"shadow-{i}", T0 + 1 + i))
    kept = join.mailboxes["r"].arrivals
    assert 0 < len(kept) < 40 and join.held_bytes <= 100_000 + 20_000  # one score past it at most
    assert _counted(join, SCORES_REFUSED) == 40 - len(kept)
    join.on_score(score("r", "champion", T0 + 50))  # named by its schedule: never refused
    assert decided(out) == {"r": ("OK", "champion", T0 + 50)}


def test_what_is_held_is_given_back_when_requests_close_or_partitions_are_dropped() -> None:
    join, out = make_join(max_held_bytes=BUDGET)
    join.on_score(forged("a", "shadow", T0))  # an orphan: held in all
    join.on_score(forged("a", "champion", T0 + 1))
    orphan_held = join.held_bytes
    join.on_request(request("a", at=T0))  # now only the shadow's score stays apart
    assert 0 < join.held_bytes < orphan_held
    for model in ("challenger", "canary"):
        join.on_score(score("a", model, T0 + 2))
    assert [r["request_id"] for r in out.logs] == ["a"] and join.held_bytes == 0
    join.restore(Finished({}, {"d"}, {"d": 0}))  # "d" logged before a restart, its scores re-read first
    join.on_score(forged("d", "champion", T0 + 3))
    join.on_request(request("d", at=T0 + 3))
    assert join.held_bytes == 0 and join.orphans == 0
    join.on_score(forged("b", "champion", T0 + 3, partition=1))
    join.on_request(request("c", at=T0 + 3))
    join.on_score(forged("c", "shadow", T0 + 4))
    assert join.held_bytes > 0
    join.drop_partitions({0, 1})
    assert join.held_bytes == 0 and join.orphans == 0


def _recounted(join: Join) -> tuple[int, dict[int, int]]:
    """What the join should count as held, from what it holds: in all, and by orphans of a partition."""
    by_partition = {p: sum(mb.held for mb in orphans.values()) for p, orphans in join._orphans.items()}
    return sum(mb.held for mb in join.mailboxes.values()) + sum(by_partition.values()), by_partition


def test_the_count_of_held_bytes_follows_what_is_held_through_any_order_of_records() -> None:
    """Requests, scheduled, unscheduled, duplicate and forged scores, clocks, on two partitions, under
    a budget a few orphans fill: after every record the count is what the mailboxes hold."""
    rng = random.Random(7)
    join, out = make_join(max_held_bytes=200_000, max_orphans=10, orphan_grace_ms=50)
    at, peak = T0, 0
    for step in range(3_000):
        at += rng.randint(0, 3)
        rid, partition = f"r{rng.randint(0, 40)}", rng.randint(0, 1)
        kind = rng.random()
        if kind < 0.25:
            join.on_request(request(rid, at=at, partition=partition, budget=rng.choice((20, 200))))
        elif kind < 0.9:
            model = rng.choice((*MODELS, "shadow-a", "shadow-b"))
            made = forged if rng.random() < 0.3 else score
            join.on_score(made(rid, model, at, partition=partition))
        else:
            join.on_clock(partition, at)
        held, by_partition = _recounted(join)
        assert join.held_bytes == held, step
        assert held <= 200_000 + 13_000  # one forged score past the budget at most (then it sheds or refuses)
        peak = max(peak, held)
        assert {p: n for p, n in join._orphan_bytes.items() if n} == {p: n for p, n in by_partition.items() if n}
    # The budget was reached: by the unscheduled scores' half at least, refused beyond it.
    assert out.answers and peak > 200_000 // 2 and _counted(join, ORPHAN_SCORES) and _counted(join, SCORES_REFUSED)
    join.on_score(forged("left", "champion", at + 1, partition=1))
    join.drop_partitions({0, 1})
    assert join.held_bytes == 0


def test_unscheduled_scores_of_open_requests_take_at_most_half_the_budget_and_push_out_no_early_score() -> None:
    """Forged scores of models no schedule names, on requests read (they wait out the request's
    budget), filled the whole budget: every early score of a real request, on another partition,
    was then dropped the moment it was read, and its request answered TIMEOUT (a review's repro)."""
    join, out = make_join(max_held_bytes=200_000)
    for i in range(30):
        join.on_request(request(f"f{i}", at=T0, budget=60_000, partition=0))
        for k in range(64):
            join.on_score(forged(f"f{i}", f"unscheduled-{k}", T0 + 1, partition=0))
    assert join.held_bytes <= 100_000 + 20_000  # their half, and the one score that crossed it
    assert _counted(join, SCORES_REFUSED) > 0
    join.on_score(score("early", "champion", T0 + 2, partition=1))  # before its request, as backlogs do
    assert join.orphans == 1
    join.on_request(request("early", at=T0 + 3, partition=1))
    join.on_clock(1, T0 + 5_000)
    assert decided(out)["early"][:2] == ("OK", "champion")


def test_orphans_whose_requests_come_keep_unscheduled_scores_within_their_half_only() -> None:
    """An orphan's scores of models its schedule does not name became unscheduled when its request
    came, unchecked: rounds of such orphans, then their requests (a backlog with shadow models),
    held 2.85x the budget (a review's repro)."""
    join, _out = make_join(max_held_bytes=200_000, max_orphans=10_000)
    peak = 0
    for round_ in range(6):
        ids = [f"r{round_}-{i}" for i in range(40)]
        for rid in ids:
            for k in range(3):
                join.on_score(forged(rid, f"shadow-{k}", T0 + round_))
        for rid in ids:
            join.on_request(request(rid, at=T0 + round_, budget=60_000))
        peak = max(peak, join.held_bytes)
        assert join.held_bytes - join.orphan_bytes <= 100_000
    assert peak <= 200_000 + 20_000 and _counted(join, SCORES_REFUSED) > 0


def test_the_brake_measures_orphans_against_what_the_budget_leaves_them() -> None:
    """With unscheduled scores at their half, orphans were shed at a fill of 0.5 of the whole budget:
    the brake, which holds from 0.5, never paused a partition before real early scores went."""
    from services.rendezvous.score_brake import HOLD_AT

    join, _out = make_join(max_held_bytes=200_000, max_orphans=100_000, orphan_grace_ms=10**9)
    for i in range(20):
        join.on_request(request(f"f{i}", at=T0, budget=60_000))
        for k in range(64):
            join.on_score(forged(f"f{i}", f"unscheduled-{k}", T0 + 1))
    early = 0
    while join.orphan_byte_fill < HOLD_AT:
        join.on_score(score(f"early{early}", "champion", T0 + 2, partition=1))
        early += 1
    assert early > 1 and not _counted(join, ORPHAN_SCORES)  # the brake would hold before any is shed
