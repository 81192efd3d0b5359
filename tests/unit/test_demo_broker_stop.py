"""The demo stops the local broker it started only when nothing else uses it (pure logic: the
broker's consumer groups as the admin client lists them, the stop noted)."""

from __future__ import annotations

import io
import types
from typing import Any

import pytest
from rich.console import Console

from services.cli import demo
from services.core.errors import BrokerError


def stopped_with(monkeypatch: pytest.MonkeyPatch, groups: list[str] | Exception, lease: Any = None,
                 running: bool = True) -> tuple[bool, str]:
    stops: list[bool] = []

    def listed(_config: Any, prefixes: list[str], timeout: float | None = None) -> list[str]:
        if isinstance(groups, Exception):
            raise groups
        return [g for g in groups if g.startswith(tuple(prefixes))]

    monkeypatch.setattr(demo, "groups_with_members", listed)
    monkeypatch.setattr(demo, "stop_background", lambda keep_data: stops.append(keep_data))
    monkeypatch.setattr(demo, "LocalBroker", lambda: types.SimpleNamespace(is_running=lambda: running))
    out = io.StringIO()
    demo.stop_unless_in_use({}, "rdv.", Console(file=out, width=300), lease)
    return bool(stops), out.getvalue()


def test_a_second_demos_groups_keep_the_broker_running(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first demo to end stopped the broker under a second one on topics of its own (a review)."""
    stopped, said = stopped_with(monkeypatch, ["rdv.rendezvous", "demo.rendezvous", "demo.model.champion"])
    assert not stopped and "left the local broker running: demo.rendezvous, demo.model.champion still use it" in said


def test_the_demos_own_groups_alone_let_it_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    stopped, said = stopped_with(monkeypatch, ["rdv.rendezvous", "rdv.model.champion+challenger"])
    assert stopped and said == ""


def test_a_broker_that_cannot_say_is_left_running_and_said_so(monkeypatch: pytest.MonkeyPatch) -> None:
    stopped, said = stopped_with(monkeypatch, BrokerError("listing the consumer groups failed"))
    assert not stopped and "could not tell whether anything else uses it" in said


def test_a_metrics_port_another_demo_holds_is_said_with_the_flag_that_moves_them() -> None:
    """A second demo's rendezvous met the first one's port and exited (a review)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(demo.ConfigError, match=rf"metrics port {port} is taken .*--metrics-base-port"):
            demo._check_ports_free(port, 2)
    demo._check_ports_free(port, 1)  # free again
    demo._check_ports_free(0, 0)  # no metrics: nothing to check


class GoneBroker:
    """A local broker whose process is gone, its log holding why."""

    def __init__(self, log_file: Any) -> None:
        self.log_file = log_file
        self.looked = 0

    def is_running(self) -> bool:
        self.looked += 1
        return False


def test_a_broker_that_died_mid_run_stops_the_demo_with_its_last_error(tmp_path: Any) -> None:
    """It kept sending into nothing until its end, the table saying 100% met (a review)."""
    log = tmp_path / "server.log"
    log.write_text("[2026-12-06 01:21:30,001] INFO fine\n"
                   "[2026-12-06 01:21:30,002] ERROR Error while appending records: No space left on device\n")
    now = [0.0]
    broker = GoneBroker(log)
    watch = demo.BrokerWatch(broker, every_s=1.0, clock=lambda: now[0])  # type: ignore[arg-type]
    with pytest.raises(demo.ConfigError, match=r"stopped while the demo ran: .*No space left on device; its log"):
        watch.check()
    now[0] = 0.5
    watch.check()  # looked at again only after a second: the loop turns every 10 ms
    assert broker.looked == 1
    demo.BrokerWatch(None).check()  # a broker given with --bootstrap is not the demo's to watch


def test_a_second_demo_still_starting_keeps_the_broker_by_its_lease(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It had joined no consumer group yet: the first demo to end stopped the broker under it (a review)."""
    path = tmp_path / demo.DemoLease.NAME
    with demo.DemoLease(path) as first, demo.DemoLease(path):  # the second demo, starting
        stopped, said = stopped_with(monkeypatch, ["rdv.rendezvous"], lease=first)
        assert not stopped and "another demo uses it" in said
    with demo.DemoLease(tmp_path / demo.DemoLease.NAME) as alone:
        assert stopped_with(monkeypatch, ["rdv.rendezvous"], lease=alone)[0]


def test_a_broker_already_gone_is_tidied_without_a_word(monkeypatch: pytest.MonkeyPatch) -> None:
    """'left the local broker running' was said of a broker that had died (a review)."""
    stopped, said = stopped_with(monkeypatch, BrokerError("timed out"), running=False)
    assert stopped and said == ""


def test_a_broker_gone_and_started_again_by_another_demo_is_not_stopped_as_the_one_gone(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A demo whose broker died tidied it by stopping it, while a new demo holding the lease had
    started another: that one was stopped a second after it came up (a review)."""
    path = tmp_path / demo.DemoLease.NAME
    with demo.DemoLease(path) as first, demo.DemoLease(path):  # the new demo, its broker starting
        stopped, said = stopped_with(monkeypatch, BrokerError("timed out"), lease=first, running=False)
        assert not stopped and said == ""
