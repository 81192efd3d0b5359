"""Two `rendezvous broker start` at once start one broker, not two over one directory.

Both commands once saw no broker running, and both formatted and launched one over the same data
directory (two demos started together, or a demo and `make broker-start`). Real processes and a
real broker in a cache of the test's own (the provisioned jars and class-data archives linked in).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.localkafka import config, warmup

pytestmark = pytest.mark.kafka
ROOT = Path(__file__).resolve().parents[2]


def _command(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "services.cli.main", "broker", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_starts_at_once_start_one_broker(tmp_path: Path) -> None:
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        pytest.fail("this test starts a broker of its own: unset KAFKA_BOOTSTRAP_SERVERS")
    (tmp_path / config.kafka_home().name).symlink_to(config.kafka_home())  # no second Maven run
    cds_dir = config.cache_dir() / "broker-cds"
    if cds_dir.is_dir():
        (tmp_path / cds_dir.name).symlink_to(cds_dir)
    env = {**os.environ, "RDV_CACHE_DIR": str(tmp_path), warmup.WARMUP_ENV: "off"}
    try:
        first, second = _command(env, "start"), _command(env, "start")
        outputs = [proc.communicate(timeout=300) for proc in (first, second)]
        assert [first.returncode, second.returncode] == [0, 0], outputs
        bootstraps = {out.strip() for out, _err in outputs}
        assert len(bootstraps) == 1, outputs
        said = "".join(err for _out, err in outputs)
        assert "already runs at" in said, said  # the later one found the earlier one's broker
        status = _command(env, "status").communicate(timeout=60)[0]
        assert bootstraps.pop() in status
    finally:
        _command(env, "stop").communicate(timeout=120)
