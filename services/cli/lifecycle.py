"""Challenger lifecycle commands: models, schedule show/set/history, promote, rollback.

Every change is a new schedule version on the control topic, effective a moment from now
(`--effective-in`, default 2s, so every rendezvous instance has read it before it governs
anything). The rules live in services/control/ (changes, gates, evidence, liveness); this
module reads flags, asks, prints. Nothing here restarts or talks to a rendezvous directly.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from services.cli.common import messages, warn_of_history_loss
from services.cli.model_contracts import print_contracts
from services.cli.shown import counted, now_and_then, print_note, print_notes, shown
from services.control import changes
from services.control.gates import DEFAULTS_SAID, Verdict, evaluate, parse_requirements, with_defaults
from services.control.liveness import live_models, live_names, not_live, workers
from services.control.schedule import DEFAULT_DEADLINE_MS, MAX_INT, Schedule, authored, check_schedule_name
from services.control.topic import ScheduleBook, check_held, load_books, publish
from services.core.errors import ConfigError, TopicRefused
from services.core.kafka import consumer_groups, group_lag
from services.core.numbers import ascii_float, ascii_int
from services.core.ranges import format_duration_ms, format_ms, parse_duration_ms
from services.core.runtime import now_ms
from services.core.settings import KafkaSettings, check_format, parse_pairs, setting
from services.model_worker.settings import model_group, model_groups

# settings, window, candidate, champion, progress (records just read): the gate's figures
FiguresFn = Callable[[KafkaSettings, str, str, str, Callable[[int], None]], dict[str, float]]


@dataclass(frozen=True)
class ScheduleSettings(KafkaSettings):
    """Which schedule to read or change."""

    schedule_name: str = setting("default", "Which schedule on the control topic to read or change.")

    def validate(self) -> None:
        check_schedule_name(self.schedule_name, "--schedule-name")


@dataclass(frozen=True)
class ScheduleViewSettings(ScheduleSettings):
    """A command that shows something: how (the changes print one line, and take no --format)."""

    format: str = setting("table", "Output: table (for people) or json (for scripts).")

    def validate(self) -> None:
        super().validate()
        check_format(self.format)


@dataclass(frozen=True)
class ModelsSettings(ScheduleViewSettings):
    """Which models are scoring, with their figures and input contracts."""

    live_window_s: float = setting(60.0, "A model counts as live if it scored within this many seconds.",
                                   minimum=1)


@dataclass(frozen=True)
class ChangeSettings(ScheduleSettings):
    """What every schedule change takes."""

    effective_in: str = setting("2s", "How long from now the new version takes effect (e.g. 2s, 1m; at least "
                                      "1s, at most 7 days less an hour).")
    comment: str = setting("", "Why this change (kept in the schedule's history).")
    live_window_s: float = setting(
        60.0, "A model counts as live if it scored within this many seconds (unless its workers all left "
        "their consumer group), or if a worker is in its group now (unless all it scored then were errors).",
        minimum=1,
    )
    force: bool = setting(False, "Skip the check that the schedule's preferred model is scoring now.")
    supersede_pending: bool = setting(
        False, "Take effect when asked even if a version published before is still to take effect (a "
        "promotion scheduled for tomorrow): each such version starting no earlier then never does. Without "
        "it, a change never takes effect before the version it follows. Every rendezvous and gateway "
        "reading the control topic must run a release that knows the flag (docs/architecture.md).")

    def effective_in_ms(self) -> int:

        return parse_duration_ms(self.effective_in, "--effective-in")

    def validate(self) -> None:
        super().validate()
        _within_reach(self.effective_in_ms(), f"--effective-in {self.effective_in}")


# Readers refuse a version effective more than MAX_EFFECTIVE_AHEAD_MS after the broker appended it;
# this much less is asked of a change, so a CLI host's clock ahead of the broker's does not get
# it refused by every reader.
CLOCK_MARGIN_MS = 3_600_000


def _within_reach(ahead_ms: int, what: str) -> None:
    """ConfigError if a version effective `ahead_ms` from now would take effect before every reader
    has it, or be refused by its readers."""
    from services.control.topic import MAX_EFFECTIVE_AHEAD_MS, MIN_EFFECTIVE_IN_MS, READER_POLL_S

    if ahead_ms < MIN_EFFECTIVE_IN_MS:
        raise ConfigError(f"{what}: at least {format_duration_ms(MIN_EFFECTIVE_IN_MS)} ahead (readers poll the control "
                          f"topic every {READER_POLL_S:g} s: sooner, they would read it after it took effect)")
    if ahead_ms > MAX_EFFECTIVE_AHEAD_MS - CLOCK_MARGIN_MS:
        raise ConfigError(f"{what}: at most {MAX_EFFECTIVE_AHEAD_MS // 86_400_000} days less an hour ahead "
                          "(readers refuse a version effective more than 7 days after it was written)")


@dataclass(frozen=True)
class ScheduleSetSettings(ChangeSettings):
    """A new schedule version from flags or a file."""

    file: str = setting("", "A JSON schedule file (see README); an effective_at in it that is still to come is "
                              "when the version takes effect, instead of --effective-in.")
    models: tuple[str, ...] = setting((), "Preference order, e.g. champion,challenger,canary.")
    wait: tuple[str, ...] = setting((), "Per-model wait, e.g. champion=50 (ms).")
    deadline_ms: int = setting(0, "Default deadline budget (0 = keep the current one).")
    traffic: str = setting("", "Answer a share with a challenger first, e.g. challenger=0.1.")
    new_schedule: bool = setting(
        False, "Publish the first version of --schedule-name while the control topic holds other schedules (one "
        "for a second deployment). Without it that is refused: most likely a missing or mistyped --schedule-name.")

    def validate(self) -> None:
        """Before the broker is asked anything: the schedule the flags make is built once here (a
        --traffic share of 5, a model listed twice, a --wait for a model not listed were refused only
        after the control topic was read), and again once it is, with the current deadline."""
        super().validate()
        if self.file and (self.models or self.wait or self.deadline_ms or self.traffic):
            raise ConfigError("schedule set takes --file or --models/--wait/--deadline-ms/--traffic, not both")
        _draft_from_flags(self, None)


@dataclass(frozen=True)
class PromoteSettings(ChangeSettings):
    """Make a model the champion, if the evidence allows."""

    require: str = setting(
        "", "Gate, e.g. agreement>=0.95,p99<=50ms,n>=10000 (see README). Defaults unless a clause names the "
        f"figure: {DEFAULTS_SAID}. Each share is shown with its 95% interval.",
        # Given empty (a variable unset in --require "$GATE"), it read as no gate: published unchecked (a review).
        if_empty="give the gate, e.g. agreement>=0.95,n>=10000, or leave --require out to promote without one",
    )
    window: str = setting("10m", "How far back the gate's figures are measured on the log topic (with --require).")
    canary: str = setting("canary", "The canary model: a fixed reference that is never made champion.")

    def validate(self) -> None:
        super().validate()
        from services.control.gates import parse_requirements

        parse_duration_ms(self.window, "--window")  # before the log is read, and under its own name
        if self.require:
            parse_requirements(self.require)


def _book(settings: ScheduleSettings, new: bool = False) -> ScheduleBook:
    """The versions of --schedule-name. Refused when the control topic holds none of it but holds
    other schedules, unless a `new` one is asked for (`schedule set --new-schedule`): a missing or
    mistyped name published a v1 that no rendezvous follows, exit 0, and then made undeploy's
    check pass for the model the real schedule answers with (a review)."""
    control = settings.topics().control
    book, names = load_books(settings.librdkafka(), control, settings.schedule_name)
    if not new:
        also = "; or `schedule set --new-schedule` to start this one" if isinstance(settings, ScheduleSetSettings) \
            else ""
        check_held(control, book, names, also)
    return book


def _shown_book(settings: ScheduleSettings, notes: Console) -> ScheduleBook:
    """The book for a command that only shows it, with a line on `notes` if the topic will lose
    versions (a change refuses such a topic when it publishes: `publish`)."""
    book = _book(settings)
    warn_of_history_loss(settings.librdkafka(), settings.topics().control, notes)
    return book


def _print_json(data: object) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")


def cmd_models(settings: ModelsSettings, console: Console, notes: Console) -> int:
    """The models scoring: a table (or JSON) on `console` (stdout), a warning on `notes` (stderr)."""
    config = settings.librdkafka()
    figures = live_models(config, settings.topics().scores, settings.live_window_s)
    book = _shown_book(settings, notes)
    role = roles_now(book, now_ms())
    table = Table(title=f"models scoring on {settings.topics().scores} (last {settings.live_window_s:.0f}s)")
    columns = ("model", "version", "role", "replicas", "scores/s", "lag", "errors", "p50 ms", "p99 ms", "last seen")
    for column in columns:
        table.add_column(column, justify="left" if column in ("model", "version", "role") else "right")
    requests, prefix = settings.topics().requests, settings.topic_prefix
    groups = model_groups(prefix, consumer_groups(config)) if figures else {}

    def lag(model: str) -> int | None:
        return group_lag(config, groups.get(model, model_group(prefix, [model])), requests)

    if settings.format == "json":
        _print_json([{"model": model, "version": version, "role": role(model),
                      "lag": lag(model), **f} for (model, version), f in sorted(figures.items())])
        return 0
    for (model, version), f in sorted(figures.items()):
        behind = lag(model)
        # Text, not markup: model names and versions come from the scores topic (any model's word).
        table.add_row(shown(model), shown(version), role(model), f"{f['replicas']:.0f}", f"{f['rate']:.1f}",
                      "-" if behind is None else str(behind), f"{f['errors']:.0f}",
                      f"{f['p50_ms']:.1f}", f"{f['p99_ms']:.1f}", f"{f['last_seen_s']:.1f}s ago")
    console.print(table)
    if not figures:
        console.print("no model has scored in that window")
    # What each model accepts (services/cli/model_contracts.py), those of models not scoring apart.
    print_contracts(settings, console, scoring={model for model, _version in figures})
    return 0


def roles_now(book: ScheduleBook, now: int) -> Callable[[str], str]:
    """Each model's role in the version in force at `now`: by the latest version, one set for
    tomorrow (up to a week ahead) relabelled the models today (a review). The traffic split's
    model is 'traffic'."""
    in_force = book.in_force(now) if book.latest else None
    champion = in_force.models[0] if in_force else None
    traffic = in_force.traffic_model if in_force else None
    in_schedule = set(in_force.models) if in_force else set()

    def role(model: str) -> str:
        if model == champion:
            return "champion"
        if model == traffic:
            return "traffic"
        return "fallback" if model in in_schedule else "challenger"

    return role


def _check_live(settings: ChangeSettings, schedule: Schedule) -> list[str]:
    """Refuse a schedule whose preferred model is not scoring; the notes to print once it is
    published: fallbacks that are not scoring either (a typo there makes a request wait out the
    deadline whenever the champion is late)."""
    if settings.force:
        return []
    config = settings.librdkafka()
    try:
        figures = live_models(config, settings.topics().scores, settings.live_window_s)
    except TopicRefused as err:  # it read as if the client role needed the scores (a review)
        raise TopicRefused(f"{err}. The live check reads the scores, as only the admin's role may (docs/security.md): "
                           "run this as the admin, who may write the control topic too, or pass --force to skip "
                           "the check") from None
    # A model undeployed a moment ago had scored in the window; one deployed and idle had not (a review).
    found = workers(config, settings.topic_prefix)
    # A model whose every score is an error (a broken model file, a contract nothing meets) is not live.
    live = live_names(figures, found)
    running, stopped = found if found else (set(), set())
    reason = not_live(schedule, live, settings.live_window_s, stopped, running)
    if reason:
        raise ConfigError(f"refused: {reason}; deploy it first, or pass --force")
    silent = [m for m in schedule.models[1:] if m not in live]
    if not silent:
        return []
    return [f"fallback model(s) {', '.join(silent)} sent no usable score in the last {settings.live_window_s:g} s: "
            "published all the same"]


def _publish_next(settings: ChangeSettings, book: ScheduleBook, draft: Schedule, console: Console,
                  effective_at: int | None = None) -> Schedule:
    now = now_ms()
    asked_ms = settings.effective_in_ms() if effective_at is None else effective_at - now
    # A file's "supersedes_pending": true asks what the flag asks (a promotion's or rollback's draft, made
    # from an earlier version, never carries it).
    supersede = settings.supersede_pending or draft.supersedes_pending
    schedule = changes.next_version(book, draft, now, asked_ms, effective_at, supersede)
    superseded = book.supersedes(schedule, now)
    if superseded and not settings.supersede_pending:
        # The file's own flag (copied from an urgent version's JSON, say) was said only after the
        # pending versions were gone for good (a review): asked for with the flag too, now.
        pending = ", ".join(f"v{v.version} at {format_ms(v.effective_at)}" for v in superseded)
        raise ConfigError(f"the file says \"supersedes_pending\": true, and {pending} would never take effect: pass "
                          "--supersede-pending as well to publish it so, or set it false in the file")
    if effective_at is not None:  # checked again: the live check took time since, and sooner is retroactive
        # When it will start (a pending version before it may hold it back past the file's time).
        _within_reach(schedule.effective_at - now, f"effective_at {format_ms(effective_at)}")
    accepted = publish(settings.librdkafka(), settings.topics().control, schedule)
    if accepted is not schedule:  # the same change, published first by another writer (`publish`)
        console.print(f"{escape(accepted.name)} v{accepted.version} makes the same change, published first by another "
                      f"writer ({escape(accepted.comment)}; effective {format_ms(accepted.effective_at)}): nothing "
                      "more to do")
        return accepted
    waits = f", waits {escape(json.dumps(dict(schedule.waits_ms)))}" if schedule.waits_ms else ""
    if schedule.traffic_model is not None and schedule.traffic_fraction > 0:  # it was not said (a review)
        waits += f", traffic {escape(schedule.traffic_model)}={schedule.traffic_fraction:g}"
    console.print(f"published {escape(schedule.name)} v{schedule.version}: {escape(str(list(schedule.models)))}{waits} "
                  f"(effective in {format_duration_ms(schedule.effective_at - now)}; {escape(schedule.comment)})")
    if schedule.effective_at > now + asked_ms:
        # A version never takes effect before the one it follows: one scheduled later holds this back.
        wanted = f"at {format_ms(effective_at)}" if effective_at is not None else f"in {settings.effective_in}"
        before = book.latest_start or 0
        starts = max(schedule.effective_at, before)
        # The version before governs until then if it started earlier (the first one governs from
        # the start of time), else never: this one starts with it, in its place.
        fate = (f"v{schedule.version - 1} governs until then" if before < starts else
                f"starting with it, this one governs in its place and v{schedule.version - 1} never does")
        print_note(console, f"not {wanted}: at {format_ms(starts)}, when v{schedule.version - 1} "
                   f"was to take effect (a version never takes effect before the one it follows); {fate} "
                   "(--supersede-pending: this one as asked)")
    for version in superseded:
        print_note(console, f"v{version.version} ({', '.join(version.models)}; {version.comment}) was to take "
                   f"effect at {format_ms(version.effective_at)}: superseded, it never does")
    return schedule


TIMES = ("effective_at", "created_at")  # epoch ms in the Schedule record: shown with their UTC time too


def cmd_schedule_show(settings: ScheduleViewSettings, console: Console, tables: Console) -> int:
    """The schedule in force: JSON or a table on stdout (`tables`), notes on `console` (stderr)."""
    book = _shown_book(settings, console)
    current = changes.current(book)
    in_force = book.in_force(now_ms())
    if settings.format == "json":  # which version governs now: said on stderr alone, a script missed it (a review)
        _print_json({**current.to_dict(), "governs_now": in_force.version == current.version,
                     "version_governing_now": in_force.version})
    else:
        table = Table(title=Text(f"schedule {current.name!r} v{current.version}"))
        table.add_column("field")
        table.add_column("value")
        for field, value in current.to_dict().items():
            text = (", ".join(value) if isinstance(value, list) else json.dumps(value) if isinstance(value, dict)
                    else f"{value} ({format_ms(value)})" if field in TIMES and value else str(value))
            table.add_row(field, shown(text))
        tables.print(table)
    if in_force.version != current.version:
        console.print(f"v{current.version} takes effect at {format_ms(book.latest_start or 0)}; v{in_force.version} "
                      "governs now")
    return 0


def cmd_schedule_history(settings: ScheduleViewSettings, console: Console, tables: Console) -> int:
    """Every accepted version: JSON or a table on stdout (`tables`), notes on `console` (stderr)."""
    book = _shown_book(settings, console)
    changes.current(book)
    if settings.format == "json":  # a version that never takes effect: said in the table alone (a review)
        _print_json([{**s.to_dict(), "never_takes_effect": _never(book, s.version)} for s in book.versions])
        return 0
    table = Table(title=Text(f"schedule {book.name!r} history"))
    for column in ("version", "effective at (UTC)", "models", "waits", "traffic", "comment"):
        table.add_column(column)
    for s in book.versions:
        traffic = f"{s.traffic_model}={s.traffic_fraction}" if s.traffic_model else ""
        effective = format_ms(s.effective_at) if s.effective_at else "always"
        if (never := _never(book, s.version)) is not None:
            effective = f"never ({never}; was {effective})"
        table.add_row(str(s.version), effective, shown(", ".join(s.models)),
                      Text(json.dumps(dict(s.waits_ms)) if s.waits_ms else ""), shown(traffic), shown(s.comment))
    tables.print(table)
    return 0


def _never(book: ScheduleBook, version: int) -> str | None:
    """Why `version` never takes effect (None: it does, did or may)."""
    if (by := book.superseded_by(version)) is not None:
        return f"superseded by v{by}"
    if (by := book.displaced_by(version)) is not None:
        return f"v{by} starts at the same time"
    return None


def cmd_schedule_set(settings: ScheduleSetSettings, console: Console) -> int:
    book = _book(settings, new=settings.new_schedule)
    draft = _draft_from_flags(settings, book.latest)  # none yet: this is the first version
    effective_at, notes = _effective_at_of(settings, draft, now_ms())
    notes += _check_live(settings, draft) + _risky(draft) + _not_carried_over(settings, book.latest)
    notes += _version_not_used(settings, draft, book.latest)
    _publish_next(settings, book, draft, console, effective_at)
    print_notes(console, notes)
    return 0


def _effective_at_of(settings: ScheduleSetSettings, draft: Schedule, now: int) -> tuple[int | None, list[str]]:
    """A file's effective_at in the future is when its version takes effect (a change meant for
    tomorrow 09:00); one already past (copied from `schedule show`) gives way to --effective-in."""
    if not settings.file or not draft.effective_at:
        return None, []
    if draft.effective_at <= now:
        return None, [f"the file's effective_at ({format_ms(draft.effective_at)}) is past: the version takes "
                      f"effect --effective-in ({settings.effective_in}) from now"]
    _within_reach(draft.effective_at - now, f"--file {settings.file}: effective_at {format_ms(draft.effective_at)}")
    return draft.effective_at, []


def _version_not_used(settings: ScheduleSetSettings, draft: Schedule, latest: Schedule | None) -> list[str]:
    """A file's version (copied from `schedule show`, or written by hand) is not the one published:
    each version is numbered next in turn (a file's v3 was published as v14 without a word: a
    newcomer's review). A file without one reads as version 1."""
    following = latest.version + 1 if latest else 1
    if not settings.file or draft.version in (1, following):
        return []
    return [f"the file's version ({draft.version}) is not used: a version is numbered next in turn on the control "
            f"topic (v{following})"]


def _risky(schedule: Schedule) -> list[str]:
    """What a schedule allows that is seldom meant (published all the same: it is the operator's call)."""
    notes = [f"--wait {model}={wait} is past the deadline ({schedule.default_deadline_ms} ms): the deadline wins"
             for model, wait in schedule.waits_ms.items() if wait > schedule.default_deadline_ms]
    if schedule.traffic_model and schedule.traffic_model not in schedule.waits_ms:
        notes.append(f"{schedule.traffic_model} answers its share first but has no --wait: when it is silent, "
                     "those requests wait up to the whole deadline before the fallback")
    return notes


def _draft_from_flags(settings: ScheduleSetSettings, current: Schedule | None) -> Schedule:
    if settings.file:
        draft = Schedule.from_file(settings.file).named(settings.schedule_name, settings.file)
    else:
        if not settings.models:
            raise ConfigError("schedule set needs --models a,b,c or --file schedule.json")
        waits = {m: _whole_ms(v, f"--wait {m}") for m, v in parse_pairs(settings.wait, "--wait")}
        traffic_model, fraction = _traffic(settings.traffic)
        deadline_ms = settings.deadline_ms or (current.default_deadline_ms if current else DEFAULT_DEADLINE_MS)
        draft = Schedule(models=settings.models, waits_ms=waits, default_deadline_ms=deadline_ms,
                         traffic_model=traffic_model, traffic_fraction=fraction)
    return dataclasses.replace(authored(draft), comment=settings.comment or draft.comment or "schedule set")


def _not_carried_over(settings: ScheduleSetSettings, current: Schedule | None) -> list[str]:
    """What the latest version had that a `--models` draft without the flag for it drops: the
    deadline is kept, waits and a traffic split are not, and went without a word (a review)."""
    if settings.file or current is None:
        return []
    dropped = []
    if current.waits_ms and not settings.wait:
        dropped.append(f"waits {json.dumps(dict(current.waits_ms))}")
    if current.traffic_model and not settings.traffic:
        dropped.append(f"traffic split {current.traffic_model}={current.traffic_fraction:g}")
    if not dropped:
        return []
    return [f"v{current.version}'s {' and '.join(dropped)} are not carried over (--wait / --traffic give them)"]


def _whole_ms(text: str, flag: str) -> int:
    try:
        value = ascii_int(text)
    except ValueError:
        raise ConfigError(f"{flag}: expected whole milliseconds, got {text!r}") from None
    if not 0 <= value <= MAX_INT:  # said here, before the broker is asked anything
        raise ConfigError(f"{flag}: expected whole milliseconds from 0 to {MAX_INT}, got {text[:30]!r}")
    return value


def _traffic(text: str) -> tuple[str | None, float]:
    if not text:
        return None, 0.0
    ((model, share),) = parse_pairs((text,), "--traffic")
    try:
        return model, ascii_float(share)
    except ValueError:
        raise ConfigError(f"--traffic: expected model=fraction, got {text!r}") from None


def cmd_promote(settings: PromoteSettings, candidate: str, console: Console, figures_fn: FiguresFn) -> int:
    changes.check_promotable(candidate, settings.canary)  # before the control topic is read (a probe)
    if not settings.require and settings.given("window"):  # accepted and ignored without a word (a review)
        print_note(console, "--window is how far back --require's figures are measured: with no --require, "
                   "nothing is measured")
    book = _book(settings)
    current, latest = _replaced(settings, book)
    if current.models[0] == candidate and current is not latest:
        raise ConfigError(f"{candidate} is the champion in force already (v{current.version}); to cancel the pending "
                          f"v{latest.version} ({', '.join(latest.models)}) instead: `rendezvous rollback "
                          f"--supersede-pending --to {current.version}`")
    draft = changes.promotion(current, candidate, settings.canary, settings.comment)
    if settings.require:
        verdicts = _gate(settings, candidate, current.models[0], console, figures_fn)
        if not all(v.passed for v in verdicts):
            raise ConfigError(f"promotion of {candidate} refused: " + "; ".join(
                f"{v.requirement.text} (measured {v.measured})" for v in verdicts if not v.passed))
    notes = _check_live(settings, draft)
    _publish_next(settings, book, draft, console)
    print_notes(console, notes)  # dropped: a fallback not scoring was published without a word (a review)
    return 0


def _gate(
    settings: PromoteSettings, candidate: str, champion: str, console: Console, figures_fn: FiguresFn
) -> list[Verdict]:
    err = messages()
    what = f"reading the last {settings.window} of the log: {candidate} against {champion}"
    # A status line is drawn on a terminal only; elsewhere a plain line now and then.
    progress = (lambda _more: None) if err.is_terminal else counted(now_and_then(err, what), lambda n: f"{n:,} records")
    with err.status(what + " ..."):
        figures = figures_fn(settings, settings.window, candidate, champion, progress)
    requirements = with_defaults(parse_requirements(settings.require), figures)
    verdicts = evaluate(requirements, figures)
    for verdict in verdicts:
        console.print(verdict.line())
    return verdicts


@dataclass(frozen=True)
class RollbackSettings(ChangeSettings):
    """Which version a rollback restores."""

    to: int = setting(0, "The version to restore (default: the latest before the latest one that governs, did "
                         "or will: a version that never took effect, such as a promotion cancelled by "
                         "--supersede-pending, is never restored unasked; run twice, a rollback restores what the "
                         "first rolled back from if that took effect: give --to to step further back; with "
                         "--supersede-pending while a version is pending, the one in force: the pending ones are "
                         "cancelled).", minimum=0)


def _replaced(settings: ChangeSettings, book: ScheduleBook) -> tuple[Schedule, Schedule]:
    """The version a change takes the place of, and the latest. The latest, which it follows; with
    --supersede-pending the one in force now, the pending ones cancelled (another than the latest:
    then it changes something even where its policy is the one in force). Judged against the latest,
    a promotion while a pending version named the candidate champion was refused, and one that
    superseded it took its champion for the old one; and judged without what it cancels, a rollback
    could no longer cancel a pending change (reviews)."""
    latest = changes.current(book)
    return (book.in_force(now_ms()) if settings.supersede_pending else latest), latest


def cmd_rollback(settings: RollbackSettings, console: Console) -> int:
    if settings.to == 0 and settings.given("to"):  # 0 is the flag's "not given": rolled back as if it were
        raise ConfigError("--to 0: versions are numbered from 1; leave --to out for the default")
    book = _book(settings)
    replaced, latest = _replaced(settings, book)
    cancels = replaced is not latest
    # Cancelling what is pending, by default the policy in force stays: the default of a rollback
    # (the version before the latest one that governs) is then one still pending, which went live
    # at once, ungated (a review).
    to = settings.to or (replaced.version if cancels else 0)
    draft = changes.rollback(book, settings.comment, to, replaced, cancels=cancels)
    notes = _check_live(settings, draft)  # the version before may name a model undeployed since
    _publish_next(settings, book, draft, console)
    print_notes(console, notes)
    return 0
