"""Promotion gates: `--require agreement>=0.95,p99<=50ms,n>=10000` against measured figures."""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from services.core.errors import ConfigError
from services.core.settings import gap_in

# figure name -> what it means (all about the candidate, over the gate's window)
FIGURES = {
    "n": "requests where both the candidate and the champion gave a usable score",
    "agreement": "share of the requests the champion labelled and the candidate answered without error (see "
                 "labelled) where the candidate's label equals the champion's (a missing label disagrees)",
    "labelled": "requests the agreement is measured on: the champion labelled them, the candidate answered",
    "p50": "candidate latency p50 (ms; request created -> score at the rendezvous; answers only, not errors)",
    "p90": "candidate latency p90 (ms)",
    "p99": "candidate latency p99 (ms)",
    "p999": "candidate latency p99.9 (ms)",
    "mad": "mean absolute score difference to the champion",
    "correlation": "Pearson correlation of scores with the champion",
    "ks": "Kolmogorov-Smirnov distance of score distributions to the champion's, on the requests both scored",
    "error_rate": "share of the candidate's outputs that were errors",
    "coverage": "share of the requests the champion answered, from the candidate's first output on, that the "
                "candidate gave a usable score or an error for (error_rate judges those; an output with neither, "
                "a label alone, counts as none)",
    "deadline_met": "share of the requests the champion answered, from the candidate's first output on, that "
                    "the candidate scored by the deadline",
    "versions": "how many versions of the candidate scored in the window (the figures mix them)",
}
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq,
}
_CLAUSE = re.compile(r"^\s*([a-z_0-9]+|p99\.9)\s*(>=|<=|==|>|<)\s*([0-9.eE+-]+)\s*(ms|s)?\s*$")
_ALIASES = {"p99.9": "p999"}  # the report's column name


@dataclass(frozen=True)
class Requirement:
    figure: str
    op: str
    value: float
    text: str

    def holds(self, actual: float) -> bool:
        return actual == actual and _OPS[self.op](actual, self.value)  # NaN never passes


@dataclass(frozen=True)
class Verdict:
    requirement: Requirement
    actual: float
    passed: bool
    # A share's 95% interval and what it is a share of (None: not a share, or of nothing).
    interval: tuple[float, float, int] | None = None

    def line(self) -> str:
        mark = "ok  " if self.passed else "FAIL"
        return f"{mark} {self.requirement.text:<22} measured {self.measured}{self._uncertainty()}"

    def _uncertainty(self) -> str:
        """How far the share may be from the candidate's true rate, and whether that reaches across
        the bound: at the default n>=100, a candidate with 2% errors passed error_rate<=0.01 40% of
        the time, each time 'ok ... measured 0.00' (a review). The verdict stays the measured
        figure's, as the operator wrote it; this says how much evidence is behind it."""
        if self.interval is None:
            return ""
        low, high, of = self.interval
        crosses = self.requirement.holds(low) != self.requirement.holds(high)
        return f" (95% interval {low:.3g}-{high:.3g} of {of:,}{'; either side of the bound' if crosses else ''})"

    @property
    def measured(self) -> str:
        """The figure with as many digits as it takes to tell its verdict: 0.94996 rounded to
        0.95 was shown failing agreement>=0.95, and a count of 99,999 read 1e+05."""
        actual = self.actual
        if actual != actual or actual in (math.inf, -math.inf):
            return str(actual)
        if actual == int(actual) and abs(actual) < 1e15:
            return str(int(actual))
        text = f"{actual:.4g}"
        for digits in (6, 9, 12, 17):
            if self.requirement.holds(float(text)) == self.passed:
                break
            text = f"{actual:.{digits}g}"
        return text


def parse_requirements(text: str) -> list[Requirement]:
    requirements = []
    clauses = [c.strip() for c in text.split(",")]
    if (gap := gap_in(clauses)) is not None:  # `a>=1,,n>=10`: a clause meant there was lost
        raise ConfigError(f"--require: clause {gap + 1} of {len(clauses)} is empty (a doubled ','?)")
    for clause in filter(None, clauses):
        match = _CLAUSE.match(clause)
        if match is None:
            raise ConfigError(f"--require: cannot read {clause!r}; expected e.g. agreement>=0.95,p99<=50ms")
        figure, op, number, unit = match.groups()
        figure = _ALIASES.get(figure, figure)
        if figure not in FIGURES:
            raise ConfigError(f"--require: unknown figure {figure!r}; known: {', '.join(FIGURES)}")
        try:
            value = float(number) * (1000.0 if unit == "s" else 1.0)
        except ValueError:  # 0.9.5, 1e, 1-2: the pattern lets some typos through
            raise ConfigError(f"--require: {number!r} is not a number ({clause!r})") from None
        if unit and not figure.startswith("p"):
            raise ConfigError(f"--require: {figure} takes no unit ({clause!r})")
        _check_range(figure, op, value, clause)
        requirements.append(Requirement(figure, op, value, clause))
    if not requirements:
        raise ConfigError("--require is empty")
    return requirements


# The values a figure can take: a bound outside them is a typo (`agreement>=95` for 95%) that
# would make the gate fail for good, or pass whatever is measured.
_SHARES = frozenset({"agreement", "error_rate", "coverage", "deadline_met", "ks"})


def _check_range(figure: str, op: str, value: float, clause: str) -> None:
    low = -1.0 if figure == "correlation" else 0.0
    high = 1.0 if figure in _SHARES or figure == "correlation" else math.inf
    within = f"between {low:g} and {high:g}" if high < math.inf else "a finite number of at least 0"
    hint = " (95% is 0.95)" if figure in _SHARES - {"ks"} and 1 < value <= 100 else ""
    if not low <= value <= high or value == math.inf:
        raise ConfigError(f"--require: {figure} is {within}, not {value:g}{hint} ({clause!r})")
    if (op == ">" and value >= high) or (op == "<" and value <= low):  # agreement>1, n<0: never passes
        raise ConfigError(f"--require: {figure} is {within}: {clause!r} can never pass")


# What every gate checks unless the operator says otherwise with a clause on the same figure: a
# handful of paired requests is no evidence, and a candidate that fails fast must not pass on its
# agreement, nor one that answers only its easy requests on its latency (errors are no latency figure),
# nor one that answers a sliver of the traffic on the figures of that sliver (2% of 10,000 requests
# passed n>=100, agreement and error_rate: a review), nor a version redeployed minutes ago on the
# figures of the one before it.
DEFAULT_MIN_N = 100
DEFAULT_ERROR_MARGIN = 0.01
DEFAULT_DEADLINE_MARGIN = 0.01
DEFAULT_MIN_COVERAGE = 0.95
# Said in `promote --help`.
DEFAULTS_SAID = (f"n>={DEFAULT_MIN_N}, error_rate <= the champion's + {DEFAULT_ERROR_MARGIN:g}, deadline_met >= "
                 f"the champion's - {DEFAULT_DEADLINE_MARGIN:g}, coverage>={DEFAULT_MIN_COVERAGE:g}, versions<=1, "
                 f"and labelled>={DEFAULT_MIN_N} with an agreement clause")


def with_defaults(requirements: list[Requirement], figures: Mapping[str, float]) -> list[Requirement]:
    """`requirements` plus `n>=100`, `error_rate<=` the champion's + 0.01, `deadline_met>=` the
    champion's - 0.01, `coverage>=0.95`, `versions<=1` and, with an agreement clause,
    `labelled>=100`, for figures they do not name (`figures`: the champion's own on the same
    requests, for the two relative to it: `champion_error_rate`, `champion_deadline_met`)."""
    named = {r.figure for r in requirements}
    extra = []
    if "n" not in named:
        extra.append(Requirement("n", ">=", DEFAULT_MIN_N, f"n>={DEFAULT_MIN_N} (default)"))
    if "error_rate" not in named:
        champion_error_rate = figures.get("champion_error_rate", math.nan)
        base = champion_error_rate if champion_error_rate == champion_error_rate else 0.0
        limit = min(1.0, base + DEFAULT_ERROR_MARGIN)
        # Shown with the digits the comparison uses: 0.13346 printed as 0.1335 read 'FAIL ... measured 0.1335'.
        extra.append(Requirement("error_rate", "<=", limit, f"error_rate<={limit:.6g} (default: champion's + 0.01)"))
    champion_met = figures.get("champion_deadline_met", math.nan)
    if "deadline_met" not in named and champion_met == champion_met:
        # A candidate scoring every request at 5x its budget passed every default: a late score is
        # still coverage. Promoted, every request would wait for it to its deadline (a review).
        limit = max(0.0, champion_met - DEFAULT_DEADLINE_MARGIN)
        extra.append(Requirement("deadline_met", ">=", limit,
                                 f"deadline_met>={limit:.6g} (default: champion's - 0.01)"))
    if "agreement" in named and "labelled" not in named:
        # n counts score pairs: with the champion labelling 3 requests of 10,000, agreement was
        # measured on those 3, and passed (a review).
        text = f"labelled>={DEFAULT_MIN_N} (default with agreement)"
        extra.append(Requirement("labelled", ">=", DEFAULT_MIN_N, text))
    if "coverage" not in named:
        extra.append(Requirement("coverage", ">=", DEFAULT_MIN_COVERAGE, f"coverage>={DEFAULT_MIN_COVERAGE} (default)"))
    if "versions" not in named:
        extra.append(Requirement("versions", "<=", 1, "versions<=1 (default: one version's figures; a --window "
                                                      "from after its rollout)"))
    return [*requirements, *extra]


def evaluate(requirements: list[Requirement], figures: Mapping[str, float]) -> list[Verdict]:
    """Each requirement's verdict on `figures`; a share (`<figure>_of` says of how many) carries its interval."""
    verdicts = []
    for r in requirements:
        actual = figures.get(r.figure, math.nan)
        of = figures.get(f"{r.figure}_of", 0.0)
        interval = (*share_interval(actual, int(of)), int(of)) if of >= 1 and 0 <= actual <= 1 else None
        verdicts.append(Verdict(r, actual, r.holds(actual), interval))
    return verdicts


_Z95 = 1.959963984540054  # the standard normal's 97.5th percentile


def share_interval(share: float, of: int) -> tuple[float, float]:
    """Wilson's 95% score interval of a share measured on `of` trials: unlike share +- 1.96 sd it
    stays inside 0..1 and is not zero wide at 0 or 1 (0 errors in 100 outputs: up to 3.7%)."""
    z2 = _Z95 * _Z95
    centre = (share + z2 / (2 * of)) / (1 + z2 / of)
    half = _Z95 * math.sqrt(share * (1 - share) / of + z2 / (4 * of * of)) / (1 + z2 / of)
    # At 0 or 1 the bound on that side is the share itself (the arithmetic leaves 3e-18 there).
    return (0.0 if share <= 0 else max(0.0, centre - half)), (1.0 if share >= 1 else min(1.0, centre + half))
