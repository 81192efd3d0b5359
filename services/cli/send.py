"""`rendezvous send`: score feature rows given as JSON, a CSV file or a JSONL file."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from services.client.client import Client
from services.core.errors import ConfigError
from services.core.settings import KafkaSettings, setting


@dataclass(frozen=True)
class SendSettings(KafkaSettings):
    """Send requests and print one JSON answer per line."""

    features: str = setting("", 'One request\'s features as a JSON object, e.g. \'{"mean_radius": 14.2}\'.')
    file: str = setting("", "A .csv (header = feature names) or .jsonl (one JSON object per line) file.")
    demo_rows: int = setting(0, "Send this many rows sampled from the demo data set instead.")
    budget_ms: int = setting(200, "Deadline budget of each request (ms after it is created).")
    wait_s: float = setting(10.0, "How long to wait for each answer before giving up (s).")

    def validate(self) -> None:
        given = sum(bool(x) for x in (self.features, self.file, self.demo_rows))
        if given != 1:
            raise ConfigError("give exactly one of --features JSON, --file PATH or --demo-rows N")
        if self.budget_ms <= 0:
            raise ConfigError(f"--budget-ms must be positive, got {self.budget_ms}")


def _number(value: object, where: str) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: feature value {value!r} is not a number") from None


def _from_json(text: str, where: str) -> dict[str, float]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{where}: expected a non-empty JSON object of feature name -> number")
    return {str(k): _number(v, f"{where} key {k!r}") for k, v in data.items()}


def read_rows(settings: SendSettings) -> Iterator[dict[str, float]]:
    if settings.features:
        yield _from_json(settings.features, "--features")
        return
    if settings.demo_rows:
        from services.model_worker.models import demo_rows

        yield from demo_rows(settings.demo_rows)
        return
    path = Path(settings.file)
    if not path.is_file():
        raise ConfigError(f"--file {path}: no such file")
    with path.open(newline="") as handle:
        if path.suffix.lower() == ".csv":
            for line, row in enumerate(csv.DictReader(handle), start=2):
                yield {k: _number(v, f"{path}:{line} column {k!r}") for k, v in row.items() if k}
        elif path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
            for line, text in enumerate(handle, start=1):
                if text.strip():
                    yield _from_json(text, f"{path}:{line}")
        else:
            raise ConfigError(f"--file {path}: expected a .csv or .jsonl file")


def warn_unknown_features(settings: KafkaSettings, rows: list[dict[str, float]]) -> str | None:
    """One warning line naming features that no published model reads (None when all are known,
    nothing is published, or the models topic cannot be read: the warning is advice only)."""
    from services.core.errors import RendezvousError
    from services.core.model_info import features_no_model_knows, read_model_infos
    from services.core.signatures import listed

    try:
        infos = list(read_model_infos(settings.librdkafka(), settings.topics().models, timeout_s=10.0).values())
    except RendezvousError:
        return None
    unknown = dict.fromkeys(name for row in rows for name in features_no_model_knows(infos, row))
    if not unknown:
        return None
    return (f"warning: no published model reads {listed(list(unknown))}; "
            "requests carrying them will get an error from every model that rejects unknown features")


def send(settings: SendSettings) -> int:
    rows = list(read_rows(settings))
    warning = warn_unknown_features(settings, rows)
    if warning:
        sys.stderr.write(warning + "\n")
    with Client(settings.librdkafka(), settings.topics(), budget_ms=settings.budget_ms,
                answer_wait_s=settings.wait_s) as client:
        answers = client.score_many(rows)
    statuses: dict[str, int] = {}
    for answer in answers:
        sys.stdout.write(json.dumps({**asdict(answer), "latency_ms": answer.latency_ms}) + "\n")
        statuses[answer.status] = statuses.get(answer.status, 0) + 1
    summary = ", ".join(f"{n} {status}" for status, n in sorted(statuses.items()))
    sys.stderr.write(f"{len(answers)} answers: {summary}\n")
    return 0
