"""What a test hands tritonclient (the Open Inference Protocol's client library) for demo rows."""

from __future__ import annotations

from typing import Any

import numpy as np

from services.model_worker.models import DEMO_FEATURES


def oip_inputs(module: Any, rows: list[dict[str, float]]) -> list[Any]:
    """One FP64 input tensor per demo feature, `module` tritonclient.http or tritonclient.grpc."""
    inputs = []
    for name in DEMO_FEATURES:
        tensor = module.InferInput(name, [len(rows)], "FP64")
        tensor.set_data_from_numpy(np.array([r[name] for r in rows], dtype=np.float64))
        inputs.append(tensor)
    return inputs
