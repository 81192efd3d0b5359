"""The local broker's warm-up switch (the warm-up itself runs in tests/faults/test_broker_warmup.py)."""

from __future__ import annotations

import pytest

from services.localkafka import warmup


@pytest.mark.parametrize(("value", "on"), [(None, True), ("", True), ("on", True), ("1", True),
                                           ("off", False), ("OFF", False), ("0", False), ("no", False)])
def test_the_broker_warm_up_is_on_unless_switched_off(value: str | None, on: bool) -> None:
    assert warmup.wanted(value) is on
