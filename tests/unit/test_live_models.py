"""The "model is live" rule of the commands that publish a schedule (services/control/liveness.py)."""

from __future__ import annotations

import pytest

from services.control.liveness import live_names, not_live
from services.control.schedule import Schedule


def _scored(**errors_of: int) -> dict[tuple[str, str], dict[str, float]]:
    """Figures of models that each sent 10 scores in the window, of requests due in it (current),
    `errors_of[model]` of them errors."""
    return {(model, "1"): {"scores": 10.0, "current": 10.0, "errors": float(errors)}
            for model, errors in errors_of.items()}


def test_a_model_whose_workers_left_their_group_is_not_live_whatever_it_scored_a_moment_ago() -> None:
    """rollback published a version preferring a model undeployed seconds before: its scores were
    still in the window, and every request then waited for it (a review)."""
    live = live_names(_scored(champion=0, contra=0), ({"champion"}, {"contra"}))
    assert live == {"champion"}
    reason = not_live(Schedule(models=("contra", "champion")), live, 60, {"contra"})
    assert reason == "contra has no worker in its consumer group now (scoring: champion)"


def test_a_model_with_a_worker_in_its_group_is_live_without_traffic_unless_it_only_failed() -> None:
    """schedule set refused two running models after a minute without requests (a review)."""
    assert live_names({}, ({"champion", "challenger"}, set())) == {"champion", "challenger"}
    assert live_names(_scored(broken=10), ({"broken"}, set())) == set()


def test_without_the_groups_the_scores_alone_decide() -> None:
    assert live_names(_scored(champion=0, broken=10, stopped=0), None) == {"champion", "stopped"}
    reason = not_live(Schedule(models=("ghost", "champion")), {"champion"}, 60)
    assert reason == "ghost sent no usable score (one without an error) in the last 60s (scoring: champion)"


def test_an_empty_group_proves_nothing_while_a_group_not_named_after_a_scoring_model_has_members() -> None:
    """A worker run with --group <prefix>model.fraud-blue scores as fraud; fraud's old default group
    stays listed, empty: fraud was refused as stopped while it scored (a review)."""
    assert live_names(_scored(fraud=0), ({"fraud-blue"}, {"fraud"})) == {"fraud"}  # "fraud-blue" names no model
    assert live_names(_scored(fraud=0, champion=0), ({"champion"}, {"fraud"})) == {"champion"}


def test_a_co_hosted_workers_group_is_named_after_the_models_it_scores() -> None:
    """`<prefix>model.a+b` read as a model 'a+b' that never scored: the check of a model just
    undeployed was off whenever a co-hosted worker ran (a review)."""
    from services.model_worker.settings import model_groups

    running = set(model_groups("rdv.", ["rdv.model.a+b", "rdv.model.champion"]))
    live = live_names(_scored(a=0, b=0, champion=0, contra=0), (running, {"contra"}))
    assert "contra" not in live and {"a", "b", "champion"} <= live
    # A model deployed and idle next to one just undeployed: the empty group proves nothing then.
    assert "contra" in live_names(_scored(champion=0, contra=0), ({"champion", "fresh"}, {"contra"}))


def test_a_model_with_a_worker_in_its_group_that_scored_nothing_while_others_scored_is_not_live() -> None:
    """A hung worker stays in its group: taken for live, `promote` without --require made a model
    that answered nothing the champion (a review). Without traffic it is live, as before."""
    live = live_names(_scored(champion=0), ({"champion", "hung"}, set()))
    assert live == {"champion"}
    reason = not_live(Schedule(models=("hung", "champion")), live, 60, set(), {"champion", "hung"})
    assert reason == ("hung sent no usable score (one without an error) in the last 60s though a worker is in its "
                      "consumer group (hung, failing, or far behind?) (scoring: champion)")
    assert live_names({}, ({"champion", "hung"}, set())) == {"champion", "hung"}
    # A new worker's backfill of old requests is no traffic: the others are idle, not hung.
    backfill = {("c", "1"): {"scores": 10.0, "errors": 0.0, "current": 0.0}}
    assert live_names(backfill, ({"champion", "c"}, set())) == {"champion", "c"}


def test_the_live_check_counts_a_backfills_scores_as_no_traffic_and_a_request_without_a_deadline_as_some(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Scores of requests due before the window are a new worker's backfill; a request may set no
    deadline (0: its schedule's default), and those scores were no traffic, so a hung model beside
    them was live (a review)."""
    from services.control import liveness
    from services.core.codec import codec
    from services.core.runtime import now_ms

    scores, now = codec("score"), now_ms()

    class Record:
        def __init__(self, model: str, deadline: int) -> None:
            self._value = scores.encode({
                "request_id": "r", "model": model, "version": "1", "instance": "i", "score": 0.5, "label": None,
                "error": None, "deadline": deadline, "received_at": now - 5, "scored_at": now, "compute_ms": 1.0})

        def value(self) -> bytes:
            return self._value

    def scored(*records: Record) -> dict[tuple[str, str], dict[str, float]]:
        monkeypatch.setattr(liveness, "read_spans", lambda *_args, **_kwargs: iter(records))
        return liveness.live_models({}, "rdv.scores", 60)

    backfill = scored(Record("c", now - 3_600_000), Record("c", now - 3_000_000))
    assert backfill[("c", "1")]["current"] == 0
    assert live_names(backfill, ({"champion", "c"}, set())) == {"champion", "c"}
    undated = scored(Record("champion", 0), Record("champion", now + 100))
    assert undated[("champion", "1")]["current"] == 2
    assert live_names(undated, ({"champion", "hung"}, set())) == {"champion"}
