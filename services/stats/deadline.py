"""The one definition of "a model met the deadline" for a request.

A model met the deadline when it gave a usable output — no error and a finite score — that reached
the rendezvous no later than the request's deadline. Its `latency_ms` in the comparison log is
measured from the request's created_at, so "by the deadline" is `latency_ms <= budget_ms`
where the budget is `deadline - created_at`. The live comparison service applies it record by
record (`met_deadline`) or, to a large batch, to its columns at once (`met_deadline_array`, as the
report does); a unit test holds the two to the same answers.
"""

from __future__ import annotations

from math import isfinite

import numpy as np


def met_deadline(error: str | None, score: float | None, latency_ms: float, budget_ms: float) -> bool:
    # A NaN or infinite score is no answer (the rendezvous takes it for an error): never "met".
    return error is None and score is not None and isfinite(score) and latency_ms <= budget_ms


def met_deadline_array(usable: np.ndarray, latency_ms: np.ndarray, budget_ms: np.ndarray) -> np.ndarray:
    """`met_deadline` over columns: `usable` = no error and a finite score."""
    result: np.ndarray = usable & (latency_ms <= budget_ms)
    return result


def champion_absent(out_row: np.ndarray, out_model: np.ndarray, champions: np.ndarray,
                    errored: np.ndarray) -> np.ndarray:
    """Per record, whether its champion (`champions`, a model code per record) missed the deadline
    by giving no output at all: a champion stuck past the deadline and the linger is in no record,
    and counted by its outputs alone it missed nothing. An ERROR answer (`errored`) was nobody's to
    score. Outputs are given by their record (`out_row`) and model code (`out_model`)."""
    has = np.zeros(len(champions), dtype=bool)
    has[out_row[out_model == champions[out_row]]] = True
    result: np.ndarray = ~has & ~errored
    return result
