"""`rendezvous send`: score feature rows given as JSON, a CSV file or a JSONL file."""

from __future__ import annotations

import contextlib
import csv
import json
import math
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

from services.client.client import Answer, AnswerTimeout, Client, InvalidRequest, checked_features
from services.core.errors import ConfigError, RendezvousError
from services.core.numbers import ascii_float
from services.core.settings import KafkaSettings, not_a_readable_file, setting
from services.core.unique_json import DuplicateKey, loads_unique

# Rows are read (and checked) before anything is sent: a bound on what one command holds in memory.
MAX_ROWS = 100_000


@dataclass(frozen=True)
class SendSettings(KafkaSettings):
    """Send requests and print one JSON answer per line."""

    features: str = setting("", 'One request\'s features as a JSON object, e.g. \'{"mean_radius": 14.2}\'.')
    file: str = setting("", "A .csv (header = feature names) or .jsonl (one JSON object per line) file.")
    demo_rows: int = setting(
        0, "Send this many rows sampled from the demo data set instead.", maximum=MAX_ROWS
    )
    budget_ms: int = setting(
        200, "Deadline budget of each request (ms after it is created).", minimum=1, maximum=3_600_000
    )
    wait_s: float = setting(
        10.0, "How long to wait for all the answers, delivery and close included (s); those missing then are "
        "counted (and which were not even delivered) and the command exits 2.",
        minimum=0.1, maximum=3600
    )

    def validate(self) -> None:
        given = sum(bool(x) for x in (self.features, self.file, self.demo_rows))
        if given != 1:
            raise ConfigError("give exactly one of --features JSON, --file PATH or --demo-rows N")


def _number(value: object, where: str) -> float:
    # bool is an int to Python, but `true` is no measurement: refuse it like any other non-number.
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"{where}: feature value {_excerpt(value)} is not a number")
    try:
        if isinstance(value, str) and "_" in value:  # float() reads 1_000 as Python source does; no data format does
            raise ValueError(value)
        number = ascii_float(value) if isinstance(value, str) else float(value)
    except (ValueError, OverflowError):
        raise ConfigError(f"{where}: feature value {_excerpt(value)} is not a number") from None
    if not math.isfinite(number):
        raise ConfigError(f"{where}: feature value {_excerpt(value)} is not a finite number")
    return number


def _excerpt(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _from_json(text: str, where: str) -> dict[str, float]:
    try:
        data = loads_unique(text)
    except DuplicateKey as exc:
        raise ConfigError(f"{where}: feature {_excerpt(exc.key)} is given twice: one value each") from None
    except (ValueError, RecursionError) as exc:
        raise ConfigError(f"{where}: not valid JSON ({str(exc)[:80]})") from None
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{where}: expected a non-empty JSON object of feature name -> number")
    row = {str(k): _number(v, f"{where} key {_excerpt(k)}") for k, v in data.items()}
    return _sendable(row, where)


def _sendable(row: dict[str, float], where: str) -> dict[str, float]:
    """The client's own check, here with the row's place: refused by `submit` in the send loop,
    a row stopped the command after the rows before it had gone, their answers unprinted."""
    try:
        checked_features(row)
    except InvalidRequest as err:
        raise ConfigError(f"{where}: {err}") from None
    return row


def read_rows(settings: SendSettings) -> list[dict[str, float]]:
    """Every row to send, all read and checked before anything is sent."""
    if settings.features:
        return [_from_json(settings.features, "--features")]
    if settings.demo_rows:
        from services.model_worker.models import demo_rows

        return demo_rows(settings.demo_rows)
    path = Path(settings.file)
    problem = not_a_readable_file(path)
    if problem:
        raise ConfigError(f"--file {path}: {problem}; expected a .csv or .jsonl file")
    reader = {".csv": _csv_rows, ".jsonl": _jsonl_rows, ".ndjson": _jsonl_rows, ".json": _jsonl_rows}
    read = reader.get(path.suffix.lower())
    if read is None:
        raise ConfigError(f"--file {path}: expected a .csv or .jsonl file")
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:  # -sig: a BOM (Excel's "CSV UTF-8") is not a name
            rows = []
            for row in read(handle, str(path)):
                rows.append(row)
                if len(rows) > MAX_ROWS:
                    raise ConfigError(f"--file {path}: more than {MAX_ROWS} rows; split the file")
    except UnicodeDecodeError:
        raise ConfigError(f"--file {path}: not UTF-8 text ({_first_bad_byte(path)}); binary file?") from None
    except OSError as exc:
        raise ConfigError(f"--file {path}: cannot read it ({exc.strerror})") from None
    except csv.Error as exc:
        raise ConfigError(f"--file {path}: not a valid CSV file ({exc})") from None
    if not rows:
        raise ConfigError(f"--file {path}: no rows to send")
    return rows


def _first_bad_byte(path: Path) -> str:
    """Where a file's UTF-8 first breaks, as line and byte of the file (the decoder's error counts
    from the start of the chunk it was given, not of the file or the line)."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        line = data.count(b"\n", 0, exc.start) + 1
        return f"line {line}, byte {exc.start - line_start + 1} of the line"
    return "a byte that is no UTF-8"  # changed since it was read


def _csv_rows(handle: TextIO, where: str) -> Iterator[dict[str, float]]:
    reader = csv.reader(handle)
    header = next(reader, None)
    # `a, b` (a space after each comma, as people write) names `a` and `b`: ` b` was sent as a
    # feature no model reads, and `a, a` was two features.
    header = [name.strip() for name in header] if header else header
    if not header or not all(header):
        raise ConfigError(f"{where}:1: expected a header of feature names (none empty)")
    if len(set(header)) != len(header):
        raise ConfigError(f"{where}:1: a feature name appears twice in the header")
    for values in reader:
        line = reader.line_num
        if not values:
            continue
        if len(values) != len(header):
            raise ConfigError(f"{where}:{line}: {len(values)} values for {len(header)} columns")
        cells = zip(header, values, strict=True)
        row = {name: _number(v, f"{where}:{line} column {_excerpt(name)}") for name, v in cells}
        yield _sendable(row, f"{where}:{line}")


def _jsonl_rows(handle: TextIO, where: str) -> Iterator[dict[str, float]]:
    for line, text in enumerate(handle, start=1):
        if text.strip():
            yield _from_json(text, f"{where}:{line}")


def warn_unknown_features(settings: KafkaSettings, rows: list[dict[str, float]]) -> str | None:
    """One warning line naming features that no published model reads (None when all are known,
    nothing is published, or the models topic cannot be read: the warning is advice only)."""
    from services.core.errors import BrokerUnavailable, RendezvousError
    from services.core.model_info import features_no_model_knows, read_model_infos
    from services.core.signatures import listed

    try:
        infos = list(read_model_infos(settings.librdkafka(), settings.topics().models, timeout_s=10.0).values())
    except BrokerUnavailable:
        raise  # no broker at all: said now, not after the client waits for it all over again
    except RendezvousError:
        return None
    unknown = dict.fromkeys(name for row in rows for name in features_no_model_knows(infos, row))
    if not unknown:
        return None
    return (f"warning: no published model reads {listed(list(unknown))}; "
            "requests carrying them will get an error from every model that rejects unknown features")


def _json_line(answer: dict[str, Any]) -> str:
    """One answer as JSON: a score that is not finite (the replies topic is a shared address
    anyone may write to) is null, where json.dumps wrote NaN or Infinity, which no parser reads."""
    finite = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in answer.items()}
    return json.dumps(finite, allow_nan=False)


def send(settings: SendSettings) -> int:
    rows = read_rows(settings)
    warning = warn_unknown_features(settings, rows)
    if warning:
        sys.stderr.write(warning + "\n")
    statuses: dict[str, int] = {}
    missing = unsent = 0
    why_unsent = "the client could send no more"
    failed: list[RendezvousError] = []
    client = Client(settings.librdkafka(), settings.topics(), budget_ms=settings.budget_ms,
                    answer_wait_s=settings.wait_s)
    until = time.monotonic() + settings.wait_s  # --wait-s bounds the delivery and the close too

    def left() -> float:
        return max(0.0, until - time.monotonic())

    try:
        futures: list[Future[Answer]] = []
        for row in rows:
            if not left():  # each submit waits for room in a full local queue: rows x --wait-s (a review)
                unsent, why_unsent = len(rows) - len(futures) - len(failed), f"--wait-s ({settings.wait_s:g} s) ran out"
                break
            try:
                futures.append(client.submit(row, give_up_at=until))  # not --wait-s again for the last row
            except RendezvousError as err:
                failed.append(err)  # this row refused (too large for the producer, ...): the others go on
                if client.stopped is not None:  # the client can send no more (its reader stopped)
                    unsent = len(rows) - len(futures) - len(failed)
                    break
        with contextlib.suppress(RendezvousError):  # each request not delivered fails its own answer, said below
            client.flush(left())
        # One wait for them all: each answer printed as it is in (input order), a missing or
        # refused one counted; one refused request stopped every answer after it.
        for future in futures:
            try:
                answer = future.result(timeout=left())
            except FutureTimeout:
                missing += 1
                continue
            except RendezvousError as err:
                failed.append(err)
                continue
            sys.stdout.write(_json_line({**asdict(answer), "latency_ms": answer.latency_ms}) + "\n")
            statuses[answer.status] = statuses.get(answer.status, 0) + 1
    finally:
        undelivered = client.close(left())
    summary = ", ".join(f"{n} {status}" for status, n in sorted(statuses.items()))
    sys.stderr.write(f"{sum(statuses.values())} answers: {summary or 'none'}\n")
    problem = _what_went_wrong(len(rows), failed, (unsent, why_unsent), (missing, undelivered), settings)
    if problem is not None:
        raise problem
    return 0


def _what_went_wrong(
    total: int, failed: list[RendezvousError], unsent_why: tuple[int, str], missing: tuple[int, int],
    settings: SendSettings,
) -> RendezvousError | None:
    """One error saying every kind of request that got no answer (refused or failed, never sent,
    unanswered), of the first kind's type. Failures were all said to be "not sent", though an
    unreadable answer's request was sent."""
    parts = []
    if failed:
        parts.append(f"{len(failed)} of {total} requests failed: {failed[0]}")
    unsent, why_unsent = unsent_why
    if unsent:
        parts.append(f"{unsent} of {total} requests were not sent: {why_unsent}")
    unanswered, undelivered = missing
    if unanswered:
        topic = settings.topics().requests
        why = (f", {min(undelivered, unanswered)} of them not even delivered to {topic}: is the broker reachable?"
               if undelivered else f": is the rendezvous running on {topic}?")
        parts.append(f"{unanswered} of {total} requests got no answer within {settings.wait_s:g}s{why}")
    if not parts:
        return None
    kind = type(failed[0]) if failed else AnswerTimeout
    return kind("; ".join(parts))
