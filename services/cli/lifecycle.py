"""Challenger lifecycle commands: models, schedule show/set/history, promote, rollback.

Every change is a new schedule version on the control topic, effective a moment from now
(`--effective-in`, default 2s, so every rendezvous instance has read it before it governs
anything). Nothing here restarts or talks to a rendezvous directly.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from rich.console import Console
from rich.table import Table

from services.cli.gate import Verdict, evaluate, parse_requirements
from services.cli.model_contracts import print_contracts
from services.control.schedule import Schedule
from services.control.topic import ScheduleBook, load_book, publish
from services.core.codec import codec
from services.core.errors import BadInput, ConfigError
from services.core.kafka import group_lag
from services.core.runtime import now_ms
from services.core.settings import KafkaSettings, parse_pairs, setting
from services.core.topic_range import read_spans

FiguresFn = Callable[[KafkaSettings, str, str, int], dict[str, float]]


@dataclass(frozen=True)
class LifecycleSettings(KafkaSettings):
    """Settings shared by the schedule-changing commands."""

    schedule_name: str = setting("default", "Which schedule on the control topic to read or change.")
    effective_in: str = setting("2s", "How long from now a new version takes effect (e.g. 2s, 1m).")
    comment: str = setting("", "Why this change (kept in the schedule's history).")
    live_window_s: float = setting(60.0, "A model counts as live if it scored within this many seconds.")
    force: bool = setting(False, "Skip the check that the schedule's preferred model is scoring now.")
    # schedule set
    file: str = setting("", "schedule set: a JSON schedule file (see README).")
    models: tuple[str, ...] = setting((), "schedule set: preference order, e.g. champion,challenger,canary.")
    wait: tuple[str, ...] = setting((), "schedule set: per-model wait, e.g. champion=50 (ms).")
    deadline_ms: int = setting(0, "schedule set: default deadline budget (0 = keep the current one).")
    traffic: str = setting("", "schedule set: answer a share with a challenger first, e.g. challenger=0.1.")
    # promote
    require: str = setting("", "promote: gate, e.g. agreement>=0.95,p99<=50ms,n>=10000 (see README).")
    window: str = setting("10m", "promote: how far back the gate's figures are measured on the log topic.")
    canary: str = setting("canary", "The canary model: a fixed reference that promote refuses to make champion.")

    def effective_in_ms(self) -> int:
        from services.core.ranges import parse_duration_ms

        return parse_duration_ms(self.effective_in, "--effective-in")


def _book(settings: LifecycleSettings) -> ScheduleBook:
    return load_book(settings.librdkafka(), settings.topics().control, settings.schedule_name)


def _current(book: ScheduleBook) -> Schedule:
    if book.latest is None:
        raise ConfigError(
            f"no schedule {book.name!r} on the control topic yet: start a rendezvous (it publishes its "
            "bootstrap schedule) or run `rendezvous schedule set --models ...`"
        )
    return book.latest


def live_models(settings: KafkaSettings, window_s: float) -> dict[tuple[str, str], dict[str, float]]:
    """Per (model, version): scores, errors, latency quantiles over the last `window_s` seconds."""
    start = now_ms() - int(window_s * 1000)
    scores = codec("score")
    seen: dict[tuple[str, str], list[tuple[int, bool, set[str]]]] = defaultdict(list)
    instances: dict[tuple[str, str], set[str]] = defaultdict(set)
    last: dict[tuple[str, str], int] = {}
    for msg in read_spans(settings.librdkafka(), settings.topics().scores, start_ms=start, timeout_s=60):
        try:
            score = scores.decode(msg.value())
        except BadInput:
            continue
        key = (score["model"], score["version"])
        seen[key].append((score["scored_at"] - score["received_at"], score["error"] is not None, set()))
        instances[key].add(score["instance"])
        last[key] = max(last.get(key, 0), score["scored_at"])
    figures = {}
    for key, rows in seen.items():
        latency = np.array([r[0] for r in rows], dtype=float)
        figures[key] = {
            "scores": float(len(rows)),
            "rate": len(rows) / window_s,
            "errors": float(sum(r[1] for r in rows)),
            "p50_ms": float(np.percentile(latency, 50)),
            "p99_ms": float(np.percentile(latency, 99)),
            "replicas": float(len(instances[key])),
            "last_seen_s": (now_ms() - last[key]) / 1000.0,
        }
    return figures


def cmd_models(settings: LifecycleSettings, console: Console) -> int:
    figures = live_models(settings, settings.live_window_s)
    book = _book(settings)
    champion = book.latest.models[0] if book.latest else None
    table = Table(title=f"models scoring on {settings.topics().scores} (last {settings.live_window_s:.0f}s)")
    columns = ("model", "version", "role", "replicas", "scores/s", "lag", "errors", "p50 ms", "p99 ms", "last seen")
    for column in columns:
        table.add_column(column, justify="left" if column in ("model", "version", "role") else "right")
    in_schedule = set(book.latest.models) if book.latest else set()
    config, requests = settings.librdkafka(), settings.topics().requests
    for (model, version), f in sorted(figures.items()):
        role = "champion" if model == champion else ("fallback" if model in in_schedule else "challenger")
        lag = group_lag(config, f"{settings.topic_prefix}model.{model}", requests)
        table.add_row(model, version, role, f"{f['replicas']:.0f}", f"{f['rate']:.1f}",
                      "-" if lag is None else str(lag), f"{f['errors']:.0f}",
                      f"{f['p50_ms']:.1f}", f"{f['p99_ms']:.1f}", f"{f['last_seen_s']:.1f}s ago")
    console.print(table)
    if not figures:
        console.print("no model has scored in that window")
    print_contracts(settings, console)  # what each model accepts (services/cli/model_contracts.py)
    return 0


def _check_live(settings: LifecycleSettings, schedule: Schedule) -> None:
    if settings.force:
        return
    live = {model for model, _version in live_models(settings, settings.live_window_s)}
    wanted = [schedule.models[0]] + ([schedule.traffic_model] if schedule.traffic_model else [])
    missing = [m for m in wanted if m not in live]
    if missing:
        raise ConfigError(
            f"refused: {', '.join(missing)} sent no score in the last {settings.live_window_s:.0f}s "
            f"(scoring: {', '.join(sorted(live)) or 'none'}); deploy it first, or pass --force"
        )


def _publish_next(settings: LifecycleSettings, book: ScheduleBook, draft: Schedule, console: Console) -> Schedule:
    current = _current(book)
    created = now_ms()
    schedule = dataclasses.replace(draft, name=book.name, version=current.version + 1, created_at=created,
                                   effective_at=max(created + settings.effective_in_ms(), current.effective_at))
    publish(settings.librdkafka(), settings.topics().control, schedule)
    console.print(f"published {schedule.name} v{schedule.version}: {list(schedule.models)} "
                  f"(effective in {settings.effective_in}; {schedule.comment})")
    return schedule


def cmd_schedule_show(settings: LifecycleSettings, console: Console) -> int:
    book = _book(settings)
    current = _current(book)
    in_force = book.in_force(now_ms())
    sys.stdout.write(json.dumps(current.to_dict(), indent=2) + "\n")
    if in_force.version != current.version:
        console.print(f"v{current.version} takes effect at {current.effective_at}; v{in_force.version} governs now")
    return 0


def cmd_schedule_history(settings: LifecycleSettings, console: Console) -> int:
    book = _book(settings)
    _current(book)
    table = Table(title=f"schedule {book.name!r} history")
    for column in ("version", "effective at (ms)", "models", "waits", "traffic", "comment"):
        table.add_column(column)
    for s in book.versions:
        traffic = f"{s.traffic_model}={s.traffic_fraction}" if s.traffic_model else ""
        table.add_row(str(s.version), str(s.effective_at), ", ".join(s.models),
                      json.dumps(dict(s.waits_ms)) if s.waits_ms else "", traffic, s.comment)
    console.print(table)
    return 0


def cmd_schedule_set(settings: LifecycleSettings, console: Console) -> int:
    book = _book(settings)
    current = _current(book)
    draft = _draft_from_flags(settings, current)
    _check_live(settings, draft)
    _publish_next(settings, book, draft, console)
    return 0


def _draft_from_flags(settings: LifecycleSettings, current: Schedule) -> Schedule:
    if settings.file:
        draft = Schedule.from_file(settings.file)
    else:
        if not settings.models:
            raise ConfigError("schedule set needs --models a,b,c or --file schedule.json")
        waits = {m: _whole_ms(v, f"--wait {m}") for m, v in parse_pairs(settings.wait, "--wait")}
        traffic_model, fraction = _traffic(settings.traffic)
        draft = Schedule(models=settings.models, waits_ms=waits,
                         default_deadline_ms=settings.deadline_ms or current.default_deadline_ms,
                         traffic_model=traffic_model, traffic_fraction=fraction)
    return dataclasses.replace(draft, comment=settings.comment or draft.comment or "schedule set")


def _whole_ms(text: str, flag: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{flag}: expected whole milliseconds, got {text!r}") from None


def _traffic(text: str) -> tuple[str | None, float]:
    if not text:
        return None, 0.0
    ((model, share),) = parse_pairs((text,), "--traffic")
    try:
        return model, float(share)
    except ValueError:
        raise ConfigError(f"--traffic: expected model=fraction, got {text!r}") from None


def cmd_promote(settings: LifecycleSettings, candidate: str, console: Console, figures_fn: FiguresFn) -> int:
    book = _book(settings)
    current = _current(book)
    if settings.canary and candidate == settings.canary:
        raise ConfigError(f"{candidate} is the canary, a fixed reference model: it is never promoted")
    if current.models[0] == candidate:
        raise ConfigError(f"{candidate} is already the champion of {book.name} (v{current.version})")
    if settings.require:
        verdicts = _gate(settings, candidate, current.models[0], console, figures_fn)
        if not all(v.passed for v in verdicts):
            raise ConfigError(f"promotion of {candidate} refused: " + "; ".join(
                f"{v.requirement.text} (measured {v.actual:.4g})" for v in verdicts if not v.passed))
    order = (candidate, current.models[0], *(m for m in current.models[1:] if m != candidate))
    waits = {m: w for m, w in current.waits_ms.items() if m in order}
    draft = dataclasses.replace(current, models=order, waits_ms=waits,
                                comment=settings.comment or f"promote {candidate} (was {current.models[0]})")
    _check_live(settings, draft)
    _publish_next(settings, book, draft, console)
    return 0


def _gate(
    settings: LifecycleSettings, candidate: str, champion: str, console: Console, figures_fn: FiguresFn
) -> list[Verdict]:
    requirements = parse_requirements(settings.require)
    figures = figures_fn(settings, candidate, champion, now_ms())
    verdicts = evaluate(requirements, figures)
    for verdict in verdicts:
        console.print(verdict.line())
    return verdicts


def cmd_rollback(settings: LifecycleSettings, console: Console) -> int:
    book = _book(settings)
    current = _current(book)
    versions = book.versions
    if len(versions) < 2:
        raise ConfigError(f"nothing to roll back to: {book.name} has only v{current.version}")
    previous = versions[-2]
    draft = dataclasses.replace(previous, comment=settings.comment or f"rollback to v{previous.version}")
    _publish_next(settings, book, draft, console)
    return 0


def summarise(figures: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in sorted(figures.items()))
