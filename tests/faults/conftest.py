"""Fixtures of the fault tests."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.localkafka.broker import LocalBroker, ephemeral_broker


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[LocalBroker]:
    """A broker of the test's own, which it may stop, edit the data of, and restart."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or not (shutil.which("java") and shutil.which("mvn")):
        pytest.fail("this test stops and restarts a broker it owns: it needs Java 17 and Maven, and "
                    "KAFKA_BOOTSTRAP_SERVERS unset (a cluster it does not own)")
    with ephemeral_broker(tmp_path) as broker:
        yield broker
