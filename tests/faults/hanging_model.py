"""A model that never returns for one input: `--model tests.faults.hanging_model:factory`."""

from __future__ import annotations

import ctypes
import threading

import numpy as np

from services.model_worker.models import Prediction
from services.model_worker.models.demo import DemoModel, _champion_scorer

HANG_AT = 7777.0  # a request whose first feature holds this value sends the model into an endless wait


class HangingModel(DemoModel):
    """The champion, except that a batch holding a row whose first feature is HANG_AT never returns
    (as a library stuck in an endless loop or a deadlock would)."""

    def __init__(self) -> None:
        super().__init__("hang", "logreg-hang-1", _champion_scorer)

    def predict(self, batch: np.ndarray) -> list[Prediction]:
        if (batch[:, 0] == HANG_AT).any():
            threading.Event().wait()
        return super().predict(batch)


def factory() -> HangingModel:
    return HangingModel()


class GilHoldingModel(DemoModel):
    """As HangingModel, except that it waits in C code holding the interpreter lock (a PyDLL call
    keeps it), as catastrophic backtracking in `re` would: no other thread of the worker runs."""

    def __init__(self) -> None:
        super().__init__("gil", "logreg-gil-1", _champion_scorer)

    def predict(self, batch: np.ndarray) -> list[Prediction]:
        if (batch[:, 0] == HANG_AT).any():
            ctypes.PyDLL(None).sleep(3600)
        return super().predict(batch)


def gil_factory() -> GilHoldingModel:
    return GilHoldingModel()
