"""A model's input contract: the features it reads, which it requires, which have a default,
and the range of values it can score.

    Signature((FeatureSpec("mean_radius", minimum=0.0, maximum=60.0),
               FeatureSpec("age", required=False, default=40.0)))

Every feature is a finite double. A row (one request's features) is valid for a model when

  * it has at least one feature,
  * every required feature is present,
  * every value is a finite number (an explicit NaN or inf is never "missing": omit the feature),
  * every value is within its feature's declared `minimum` and `maximum` (where declared: the range
    the model was fitted on, past which its answer would be confident and meaningless),
  * it names no feature outside the signature, unless the model's policy is `extra="ignore"`.

An absent optional feature takes its declared `default`; an optional feature without a default
reaches the model as NaN (for estimators that handle missing values themselves). Nothing else is
ever imputed: a request that breaks the contract gets an error naming every problem, e.g.
`unknown features: foo; missing: mean_radius, mean_texture (+28 more)`, never an answer.

The worker, the CLI (`rendezvous send` warnings, `rendezvous models`) and the published model
metadata (`services/core/model_info.py`) all use this one definition.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from itertools import chain
from operator import itemgetter
from typing import Any

import numpy as np

from services.core.errors import ModelSpecError
from services.core.rate_limit import PerSecond
from services.core.requests import RepeatedFeatures

__all__ = [
    "EXTRA_POLICIES",
    "FEATURE_TYPE",
    "FeatureSpec",
    "Prepared",
    "Signature",
    "listed",
    "outside_range",
    "shown_name",
]

FEATURE_TYPE = "double"
EXTRA_POLICIES = ("reject", "ignore")
_LISTED = 5  # names spelled out in an error before "(+N more)"
_NAME_CHARS = 60  # a longer name is cut in an error message
# A close spelling is looked for (difflib) among at most this many names, for at most this many
# new names a second per signature: among 400 similar names one look took 43 ms, five per row, so
# a batch of rows with misspelt names took nearly a minute, inside the model's timed turn.
_SPELLING_CANDIDATES = 64
_SPELLINGS_PER_SECOND = 10
_REMEMBERED_HINTS = 1024
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_.:/-]+")
# Exactly these (bool is an int, and not a number here; numpy's scalars are, its bool_ not).
_NUMBER_TYPES = frozenset((float, int, np.float64, np.float32, np.float16, np.int64, np.int32, np.int16, np.int8,
                           np.uint64, np.uint32, np.uint16, np.uint8))


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """One input column: a finite double, required, or optional with an explicit default (or none),
    within [minimum, maximum] where either is declared (inclusive)."""

    name: str
    required: bool = True
    default: float | None = None
    type: str = FEATURE_TYPE
    minimum: float | None = None
    maximum: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ModelSpecError(f"a feature name must be a non-empty string, got {self.name!r}")
        if self.type != FEATURE_TYPE:
            raise ModelSpecError(f"feature {self.name!r}: type {self.type!r} is not supported (only double)")
        self._check_range()
        if self.default is None:
            return
        if self.required:
            raise ModelSpecError(f"feature {self.name!r} is required, so it cannot have a default")
        if not _is_finite_number(self.default):
            shown = repr(self.default)[:_NAME_CHARS]
            raise ModelSpecError(f"feature {self.name!r}: default {shown} is not a finite number")
        if self.outside(self.default):
            raise ModelSpecError(f"feature {self.name!r}: default {self.default!r} is {self.outside(self.default)}")

    def _check_range(self) -> None:
        for bound, value in (("minimum", self.minimum), ("maximum", self.maximum)):
            if value is not None and not _is_finite_number(value):
                shown = repr(value)[:_NAME_CHARS]
                raise ModelSpecError(f"feature {self.name!r}: {bound} {shown} is not a finite number")
            if value is not None:  # as the model's matrix holds it (an int past 2**53 is rounded there)
                object.__setattr__(self, bound, float(value))
        if self.minimum is not None and self.maximum is not None and self.minimum > self.maximum:
            raise ModelSpecError(f"feature {self.name!r}: minimum {self.minimum!r} is above maximum {self.maximum!r}")

    @property
    def bounded(self) -> bool:
        return self.minimum is not None or self.maximum is not None

    def outside(self, value: float) -> str | None:
        """How a finite `value` is outside the declared range ("below its minimum 0.0"), or None.
        Compared as the double the model would receive, as the batch check compares it."""
        return outside_range(float(value), self.minimum, self.maximum)


@dataclass(frozen=True)
class Prepared:
    """A batch checked against a signature: the model's matrix for the valid rows, errors for the rest."""

    matrix: np.ndarray  # float64 (len(valid), len(signature.features)), columns in signature order
    valid: list[int]  # row indices of the batch the matrix rows belong to, in order
    errors: dict[int, str]  # row index -> why that row was not scored


@dataclass(frozen=True)
class Signature:
    """The ordered features a model reads, and what it does with features it does not know."""

    features: tuple[FeatureSpec, ...]
    extra: str = "reject"

    def __post_init__(self) -> None:
        features = tuple(self.features)
        object.__setattr__(self, "features", features)
        if not features or not all(isinstance(f, FeatureSpec) for f in features):
            raise ModelSpecError(f"a signature needs at least one FeatureSpec, got {self.features!r}")
        names = [f.name for f in features]
        if len(set(names)) != len(names):
            twice = sorted({n for n in names if names.count(n) > 1})
            raise ModelSpecError(f"a signature lists these features more than once: {', '.join(twice)}")
        if self.extra not in EXTRA_POLICIES:
            raise ModelSpecError(f"extra-features policy must be one of {EXTRA_POLICIES}, got {self.extra!r}")

    @classmethod
    def all_required(cls, names: Iterable[str], extra: str = "reject") -> Signature:
        return cls(tuple(FeatureSpec(n) for n in names), extra)

    def with_extra(self, extra: str) -> Signature:
        return self if extra == self.extra else replace(self, extra=extra)

    @cached_property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    @cached_property
    def required(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features if f.required)

    @cached_property
    def _index(self) -> dict[str, FeatureSpec]:
        return {f.name: f for f in self.features}

    @cached_property
    def _get_all(self) -> Any:
        getter = itemgetter(*self.names)
        return getter if len(self.names) > 1 else (lambda row: (getter(row),))

    @cached_property
    def _hints(self) -> _Hints:
        return _Hints()

    @cached_property
    def _fill(self) -> np.ndarray:
        """Per column: the value an absent feature takes (its default, else NaN)."""
        return np.array([math.nan if f.default is None else f.default for f in self.features], dtype=np.float64)

    # -- one row -----------------------------------------------------------------------------

    def problem(self, row: Mapping[str, Any]) -> str | None:
        """Why `row` breaks the contract (every reason, in one line), or None when it is valid."""
        if isinstance(row, RepeatedFeatures):
            return row.reason
        if not row:
            wanted = "missing: " + listed(self.required) if self.required else "this model reads: " + listed(self.names)
            return "no features given; " + wanted
        index = self._index
        unknown = [k for k in row if k not in index] if self.extra == "reject" else []
        missing = [n for n in self.required if row.get(n) is None]
        bad = [(k, v) for k, v in row.items() if k in index and v is not None and not _is_finite_number(v)]
        outside = self._outside(row) if self.bounded else []
        parts = []
        if unknown:
            parts.append("unknown features: " + self._unknown_part(unknown, missing))
        if missing:
            parts.append("missing: " + listed(missing))
        if bad:
            parts.append("not a finite number: " + _listed_values(bad))
        if outside:
            parts.append("outside the model's range: " + _listed_reasons(outside))
        if not parts and not any(k in index for k in row):
            parts.append("none of the features given is one this model reads")
        return "; ".join(parts) or None

    def _unknown_part(self, unknown: Sequence[str], missing: Sequence[str]) -> str:
        candidates = tuple(missing) or self.names
        return _first_few([_shown(name) + self._hints.hint(name, candidates) for name in unknown[:_LISTED]],
                          len(unknown))

    def _outside(self, row: Mapping[str, Any]) -> list[tuple[str, Any, str]]:
        """(name, value, how) for each given finite value outside its feature's range."""
        index = self._index
        found = []
        for name, value in row.items():
            spec = index.get(name)
            if spec is not None and spec.bounded and _is_finite_number(value) and (how := spec.outside(value)):
                found.append((name, value, how))
        return found

    @property
    def bounded(self) -> bool:
        """Whether any feature declares a range."""
        return self._bounds is not None

    @cached_property
    def _bounds(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Per column, the lowest and highest value allowed (±inf where none is declared); None
        when no feature declares a range, so an unbounded contract costs no check at all."""
        if not any(f.bounded for f in self.features):
            return None
        low = [-math.inf if f.minimum is None else f.minimum for f in self.features]
        high = [math.inf if f.maximum is None else f.maximum for f in self.features]
        return np.array(low, dtype=np.float64), np.array(high, dtype=np.float64)

    def values(self, row: Mapping[str, Any]) -> list[float]:
        """The model's columns for a valid row: given values, else defaults, else NaN."""
        fill = self._fill.tolist()
        return [fill[i] if (v := row.get(name)) is None else float(v) for i, name in enumerate(self.names)]

    # -- a batch (the worker's hot path) ---------------------------------------------------------

    def prepare(self, rows: Sequence[Mapping[str, Any]]) -> Prepared:
        """Check every row; stack the valid ones into the model's float64 matrix.

        The common case (exactly the signature's features, all finite) costs one C-level
        gather per row, one conversion of the whole batch and one vectorised finiteness check;
        any other row takes `problem()` / `values()`, which explain or fill it.
        """
        n, k = len(rows), len(self.names)
        get_all, placeholder = self._get_all, self._placeholder
        exact_len = self.extra == "reject"  # all k names present + nothing else = exactly k keys
        gathered: list[tuple[Any, ...]] = []
        slow: list[int] = []
        for i, row in enumerate(rows):
            if (len(row) == k or (not exact_len and len(row) > k)) and type(row) is not RepeatedFeatures:
                try:
                    gathered.append(get_all(row))
                    continue
                except KeyError:
                    pass
            gathered.append(placeholder)
            slow.append(i)
        # numpy would read True as 1.0 and "1.5" as 1.5: only plain numbers take the shortcut.
        if not _NUMBER_TYPES.issuperset(map(type, chain.from_iterable(gathered))):
            return self._prepare_slowly(rows)
        try:
            out = np.fromiter(chain.from_iterable(gathered), dtype=np.float64, count=n * k).reshape(n, k)
        except (TypeError, ValueError, OverflowError):  # an int too large for a double: row by row
            return self._prepare_slowly(rows)
        if not slow and np.isfinite(out).all():
            # The common case in two numpy calls: at low rates each batch runs on a cold CPU,
            # where every numpy call costs tens of microseconds (docs/benchmarks.md).
            return self.refuse_out_of_range(_prepared(out, {}))
        errors: dict[int, str] = {}
        fast = np.ones(n, dtype=bool)
        fast[slow] = False
        for i in np.flatnonzero(fast & ~np.isfinite(out).all(axis=1)).tolist():
            errors[i] = self.problem(rows[i]) or "a feature value is not a finite number"
        for i in slow:
            reason = self.problem(rows[i])
            if reason is None:
                out[i] = self.values(rows[i])
            else:
                errors[i] = reason
        return self.refuse_out_of_range(_prepared(out, errors))

    def refuse_out_of_range(self, prepared: Prepared) -> Prepared:
        """`prepared` with each valid row that has a value outside its feature's range moved to
        the errors: a batch checked otherwise (the worker's request walk checks names and
        finiteness only) is checked so too. NaN (an optional feature absent) is never outside:
        comparisons with it are false. A contract without ranges returns `prepared` as it is."""
        if self._bounds is None or not prepared.valid:
            return prepared
        low, high = self._bounds
        matrix = prepared.matrix
        outside = np.flatnonzero(((matrix < low) | (matrix > high)).any(axis=1)).tolist()
        if not outside:
            return prepared
        errors = dict(prepared.errors)
        for position in outside:
            given = {name: v for name, v in zip(self.names, matrix[position].tolist(), strict=True) if v == v}
            errors[prepared.valid[position]] = "outside the model's range: " + _listed_reasons(self._outside(given))
        gone = set(outside)
        kept = [p for p in range(len(prepared.valid)) if p not in gone]
        return Prepared(matrix[kept], [prepared.valid[p] for p in kept], errors)

    def _prepare_slowly(self, rows: Sequence[Mapping[str, Any]]) -> Prepared:
        out = np.empty((len(rows), len(self.names)), dtype=np.float64)
        errors: dict[int, str] = {}
        for i, row in enumerate(rows):
            reason = self.problem(row)
            if reason is None:
                out[i] = self.values(row)
            else:
                errors[i] = reason
        return _prepared(out, errors)

    @cached_property
    def _placeholder(self) -> tuple[float, ...]:
        return (math.nan,) * len(self.names)

    # -- published form ----------------------------------------------------------------------------

    def to_records(self) -> list[dict[str, Any]]:
        """The features as plain dicts (the `features` field of a ModelInfo record, or a sidecar)."""
        return [{"name": f.name, "type": f.type, "required": f.required, "default": f.default,
                 "minimum": f.minimum, "maximum": f.maximum} for f in self.features]

    @classmethod
    def from_records(cls, items: Any, where: str, extra: str = "reject") -> Signature:
        """Parse a JSON list whose entries are a name (required) or an object
        {"name": ..., "required": true|false, "default": number, "type": "double",
         "minimum": number, "maximum": number} (every key but the name optional)."""
        if not isinstance(items, list) or not items:
            raise ModelSpecError(f"{where}: expected a non-empty JSON list of features")
        return cls(tuple(_feature_from(item, where) for item in items), extra)


def _prepared(out: np.ndarray, errors: dict[int, str]) -> Prepared:
    if not errors:
        return Prepared(out, list(range(len(out))), errors)
    valid = [i for i in range(len(out)) if i not in errors]
    return Prepared(out[valid], valid, errors)


def _feature_from(item: Any, where: str) -> FeatureSpec:
    if isinstance(item, str):
        return FeatureSpec(item)
    if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
        raise ModelSpecError(
            f'{where}: a feature is a name or an object like {{"name": "age", "default": 40}}, got {item!r}'
        )
    unknown = set(item) - {"name", "required", "default", "type", "minimum", "maximum"}
    if unknown:
        raise ModelSpecError(f"{where}: feature {item['name']!r} has unknown keys {sorted(unknown)}")
    default = item.get("default")
    required = item.get("required", default is None)
    if not isinstance(required, bool):
        raise ModelSpecError(f"{where}: feature {item['name']!r}: required must be true or false")
    try:
        return FeatureSpec(item["name"], required, default, item.get("type", FEATURE_TYPE),
                           item.get("minimum"), item.get("maximum"))
    except ModelSpecError as err:
        raise ModelSpecError(f"{where}: {err}") from None


def outside_range(value: float, minimum: float | None, maximum: float | None) -> str | None:
    """How `value` is outside [minimum, maximum] (either may be None: no bound), e.g. "above its
    maximum 28.11", or None: the one wording of the worker's error and the gateway's 400."""
    if minimum is not None and value < minimum:
        return f"below its minimum {minimum!r}"
    if maximum is not None and value > maximum:
        return f"above its maximum {maximum!r}"
    return None


def _listed_values(pairs: Sequence[tuple[str, Any]]) -> str:
    return _first_few([f"{_shown(k)}={repr(v)[:_NAME_CHARS]}" for k, v in pairs[:_LISTED]], len(pairs))


def _listed_reasons(found: Sequence[tuple[str, Any, str]]) -> str:
    return _first_few([f"{_shown(k)}={repr(v)[:_NAME_CHARS]} ({how})" for k, v, how in found[:_LISTED]], len(found))


def _first_few(shown: Sequence[str], total: int) -> str:
    """`a, b, c, d, e (+25 more)`: what is shown of `total` items, then how many more."""
    more = total - len(shown)
    return ", ".join(shown) + (f" (+{more} more)" if more else "")


def _is_finite_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond a double's range
        return False


def _shown(name: str) -> str:
    """A name as an error shows it: bare when plain, quoted when it has spaces or odd characters."""
    cut = name if len(name) <= _NAME_CHARS else name[:_NAME_CHARS] + "…"
    return cut if _PLAIN_NAME.fullmatch(name) else repr(cut)


def _normalised(name: str) -> str:
    return re.sub(r"[\s\-.]+", "_", name.strip().lower())


class _Hints:
    """Hints for unknown feature names (` (did you mean x?)` for a near miss: the same name up to
    case, spaces or dashes, else a close spelling), each worked out once, close spellings within
    a budget (`_SPELLINGS_PER_SECOND`): what a row's error costs stays small beside scoring it."""

    def __init__(self) -> None:
        self._known: dict[tuple[str, tuple[str, ...]], str] = {}
        self._normal: dict[tuple[str, ...], dict[str, str]] = {}  # candidates -> normalised name -> name
        self._spellings = PerSecond(_SPELLINGS_PER_SECOND)

    def hint(self, name: str, candidates: tuple[str, ...]) -> str:
        if len(name) > 2 * _NAME_CHARS:
            # No name is near it; and kept, each key held its whole name: 1,000 requests with an
            # unknown name of 0.5 MB kept 477 MiB until the cache filled (a review).
            return ""
        key = (name, candidates)
        found = self._known.get(key)
        if found is not None:
            return found
        same = self._normalised_index(candidates).get(_normalised(name))
        may_spell = same is None and len(candidates) <= _SPELLING_CANDIDATES
        spell = may_spell and self._spellings.spend()
        close = [same] if same else difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.8) if spell else []
        found = f" (did you mean {close[0]}?)" if close else ""
        if spell or not may_spell:  # else a lesser hint than its own (over the budget): worked out again later
            self._known = _bounded(self._known)
            self._known[key] = found
        return found

    def _normalised_index(self, candidates: tuple[str, ...]) -> dict[str, str]:
        index = self._normal.get(candidates)
        if index is None:
            index = {}
            for candidate in candidates:
                index.setdefault(_normalised(candidate), candidate)  # the first, as a scan would find
            self._normal = _bounded(self._normal, 64)
            self._normal[candidates] = index
        return index


def _bounded(cache: dict[Any, Any], most: int = _REMEMBERED_HINTS) -> dict[Any, Any]:
    """`cache`, emptied when it holds `most` entries (hostile names must not grow it for ever)."""
    return {} if len(cache) >= most else cache


def listed(names: Sequence[str], *, shown: bool = False) -> str:
    """`a, b, c, d, e (+25 more)`: the first few names, then how many more; `shown`: items
    already as an error shows them (names in them through `shown_name`), listed as they are."""
    return _first_few(names[:_LISTED] if shown else [_shown(n) for n in names[:_LISTED]], len(names))


def shown_name(name: str) -> str:
    """A feature's name as an error or a listing shows it (bare, or quoted and cut when odd)."""
    return _shown(name)
