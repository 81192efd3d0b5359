"""The comparison service's champion is the preferred model of the schedule in force on the control
topic, not whatever chosen model an OK record on the log names (a real broker)."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import Producer

from services.comparison.service import ComparisonService
from services.comparison.settings import ComparisonSettings
from services.control.schedule import Schedule
from services.control.topic import publish
from services.core.codec import codec
from services.core.runtime import now_ms
from services.core.settings import Topics
from tests.integration.harness import Services, wait_until

pytestmark = pytest.mark.kafka


def _record(rid: str, created: int, status: str, chosen: str, outputs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"request_id": rid, "created_at": created, "deadline": created + 200, "answered_at": created + 50,
            "status": status, "chosen_model": chosen, "reason": "", "schedule": "default", "schedule_version": 1,
            "outputs": outputs}


def _output(model: str, score: float | None, error: str | None = None) -> dict[str, Any]:
    return {"model": model, "version": "v1", "score": score, "label": None, "error": error, "latency_ms": 20.0,
            "compute_ms": 1.0, "late": False}


def test_in_a_champion_outage_with_forged_ok_records_the_champion_is_the_schedules(
    services: Services, bootstrap: str, prefix: str, topics: Topics, config: dict[str, Any]
) -> None:
    """Started in the champion's outage (every answer a FALLBACK) it knew no champion, so the
    ChampionDeadlineMisses page could not fire; and any OK record on the log named one (a review)."""
    publish(config, topics.control, Schedule(models=("champion", "challenger"), created_at=now_ms()))
    comparisons, producer, now = codec("comparison"), Producer(config), now_ms()
    for i in range(60):
        down = _record(f"r{i}", now + i, "FALLBACK", "challenger",
                       [_output("champion", None, "TimeoutError: late"), _output("challenger", 0.8)])
        forged = _record(f"f{i}", now + i, "OK", "forged", [_output("forged", 0.1), _output("challenger", 0.8)])
        for record in (down, forged):
            producer.produce(topics.log, comparisons.encode(record), key=record["request_id"])
    assert producer.flush(30) == 0
    settings = ComparisonSettings(bootstrap=bootstrap, topic_prefix=prefix, start_from="earliest")
    settings.validate()
    comparison: ComparisonService = services.start(ComparisonService(settings))
    wait_until(lambda: comparison.processed >= 120, 60, "the comparison service to read the log")
    assert comparison.champion.current == "champion"
