"""A service says that no broker answers before it compiles its numba loops (no broker here).

With numba's cache empty (a first start, a new image without `rendezvous precompile`), the loops
took 5-10 s to compile in the constructors, before the broker was asked: `rendezvous serve`
against no broker said so after 9.5 s instead of its 2 s --connect-timeout-s."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from services.core.errors import RendezvousError

NO_BROKER = "127.0.0.1:1"  # nothing listens there


def _rendezvous() -> Callable[[], object]:
    from services.rendezvous.service import Rendezvous
    from services.rendezvous.settings import RendezvousSettings

    return lambda: Rendezvous(RendezvousSettings(bootstrap=NO_BROKER, connect_timeout_s=0.5, models=("champion",)))


def _comparison() -> Callable[[], object]:
    from services.comparison.service import ComparisonService
    from services.comparison.settings import ComparisonSettings

    return lambda: ComparisonService(ComparisonSettings(bootstrap=NO_BROKER, connect_timeout_s=0.5))


def _worker() -> Callable[[], object]:
    from services.model_worker.settings import WorkerSettings
    from services.model_worker.worker import ModelWorker

    return lambda: ModelWorker(WorkerSettings(bootstrap=NO_BROKER, connect_timeout_s=0.5, model="demo:champion"))


@pytest.mark.parametrize(("make", "loops"), [
    (_rendezvous, ["services.rendezvous.compiled_records.warm_up"]),
    (_comparison, ["services.comparison.service.warm_up", "services.comparison.kernels.warm_up"]),
    (_worker, ["services.model_worker.walked.warm_up_features"]),
], ids=["rendezvous", "comparison", "model worker"])
def test_no_loop_is_compiled_before_the_broker_answers(make: Callable[[], Callable[[], object]], loops: list[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    compiled: list[str] = []
    for loop in loops:
        monkeypatch.setattr(loop, lambda *_a, name=loop: compiled.append(name))
    service = make()()
    with pytest.raises(RendezvousError, match="no Kafka broker answered"):
        service.run(threading.Event())  # type: ignore[attr-defined]
    assert compiled == []
