"""The local broker's warm-up switch and its log (the warm-up itself runs in tests/faults/test_broker_warmup.py)."""

from __future__ import annotations

import logging

import pytest

from services.localkafka import warmup


@pytest.mark.parametrize(("value", "on"), [(None, True), ("", True), ("on", True), ("1", True),
                                           ("off", False), ("OFF", False), ("0", False), ("no", False)])
def test_the_broker_warm_up_is_on_unless_switched_off(value: str | None, on: bool) -> None:
    assert warmup.wanted(value) is on


def test_a_switch_that_says_neither_on_nor_off_is_refused_with_its_name() -> None:
    """It counted as on: `RDV_BROKER_WARMUP=of` kept the warm-up without a word."""
    from services.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"RDV_BROKER_WARMUP: expected on or off, got 'of'"):
        warmup.wanted("of")


def test_librdkafka_retry_warnings_of_the_warm_up_are_not_shown(caplog: pytest.LogCaptureFixture) -> None:
    """Right after a start the coordinator is still loading and librdkafka warns while it retries:
    routine for a warm-up, so only its errors reach the person starting the broker."""
    with caplog.at_level(logging.DEBUG):
        warmup._QUIET.warning("GETPID [rdkafka#producer-4]: Coordinator load in progress: retrying")
        warmup._QUIET.error("FAIL [rdkafka#producer-4]: Connection refused")
    assert [(r.levelno, r.name) for r in caplog.records] == [(logging.ERROR, warmup._QUIET.name)]
