"""Settings of one model worker process."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from services.core import runtime
from services.core.errors import ConfigError
from services.core.model_names import check_model_name
from services.core.score_limits import MAX_VERSION_CHARS
from services.core.settings import MAX_BATCH, ServiceSettings, setting

TRUST_MODEL_FILE_HELP = (
    "Allow a pickle/joblib model file (loading one runs any code it contains), and a skops file holding "
    "types skops does not trust by default or an estimator whose compiled code reads arrays from the file "
    "unchecked (SVC and the other libsvm models, nearest neighbours, k-means; docs/model-files.md). Only for "
    "files you trust; prefer .skops or .onnx."
)


def trust_model_file_setting() -> bool:
    """The --trust-model-file field, shared by every command that loads a model spec."""
    value: bool = setting(False, TRUST_MODEL_FILE_HELP)
    return value


def ignore_extra_features_setting() -> bool:
    """The --ignore-extra-features field: a replay scores as the live worker it stands for."""
    value: bool = setting(
        False, "Score requests that carry features outside the model's signature, ignoring those features "
        "(default: such a request gets an error score naming them, so a misspelt name is never dropped)."
    )
    return value


def extra_features_policy(ignore: bool) -> str:
    """The signature's policy for features outside it: reject (default) or ignore."""
    return "ignore" if ignore else "reject"


def parse_co_host(items: tuple[str, ...]) -> list[tuple[str, str]]:
    """--co-host NAME=SPEC,... as (name, spec) pairs; a one-line error for anything else."""
    pairs = []
    for item in items:
        name, _, spec = item.partition("=")
        if not name.strip() or not spec.strip():
            raise ConfigError(f"--co-host expects NAME=SPEC (e.g. challenger=demo:challenger), got {item!r}")
        check_model_name(name.strip(), "--co-host name")
        pairs.append((name.strip(), spec.strip()))
    return pairs


def check_co_hosted_names(names: list[str]) -> None:
    """Models scored by one worker need distinct names without '+': the shared group is named
    model.<a>+<b>+..., and a '+' inside a name would make it ambiguous."""
    if len(set(names)) < len(names):
        raise ConfigError(f"co-hosted models need distinct names, got {', '.join(names)}")
    if len(names) > 1 and any("+" in name for name in names):
        raise ConfigError(f"co-hosted model names may not contain '+', got {', '.join(names)}")


def worker_name(model_names: list[str]) -> str:
    """A worker's name from the models it scores with (its logs, client id and group)."""
    return "+".join(model_names)


def model_group(prefix: str, model_names: list[str]) -> str:
    """The default consumer group of a worker scoring with these models (one, or co-hosted)."""
    return f"{prefix}model.{worker_name(model_names)}"


@dataclass(frozen=True)
class WorkerSettings(ServiceSettings):
    """A worker runs one model under a name and version in its own consumer group."""

    model: str = setting(
        "", "Model spec: demo:<champion|challenger|canary|slow|flaky|contrarian>, module.path:factory, "
        "a scikit-learn .skops file (safe), an .onnx file, or a .joblib/.pkl file (with --trust-model-file)."
    )
    name: str = setting("", "Model name written on every score (default: the model's own name).")
    version: str = setting("", "Model version written on every score (default: the model's own).", identifier=True)
    group: str = setting("", "Consumer group (default: <prefix>model.<name>); replicas of a model share it.",
                         identifier=True)
    instance: str = setting("", "Replica id written on every score (default: host-pid).", identifier=True)
    max_batch: int = setting(256, "Largest micro-batch handed to the model.", minimum=1, maximum=MAX_BATCH)
    start_from: str = setting(
        "earliest", "Where a new consumer group starts: earliest (nothing missed: every request the topic still "
        "keeps is scored first, said at start when that is more than 1,000) or latest (new requests only)."
    )
    trust_model_file: bool = trust_model_file_setting()
    ignore_extra_features: bool = ignore_extra_features_setting()
    start_at: str = setting(
        "", "Catch up on history: a new consumer group starts at this time (ISO, epoch ms, or a duration ago "
        "like 1h) instead of --start-from; ignored once the group has committed offsets."
    )
    commit_interval_ms: int = setting(100, "How often the offsets of scored requests are committed (ms).", minimum=1)
    predict_timeout_s: float = setting(
        60.0, "Longest a model may take to score one micro-batch (s; 0 = no limit here: a batch must still end "
        "within max.poll.interval.ms, librdkafka's 300 s unless --kafka-config sets it). A model still busy after it "
        "is taken to be stuck for good: the batch's requests get an error Score, its offsets are committed and "
        "the worker exits (code 70) for its supervisor to start a fresh one, which reads on after that batch. "
        "A model stuck holding the interpreter lock is handled by a rescue process the worker starts, which "
        "does the same a little later (timeout + max(2 s, timeout/2), at most 10 s later) and kills the worker. "
        "A batch the model failed is tried again in parts (row by row at worst) for a quarter of it (15 s if 0); "
        "the rows left get the batch's error.",
        minimum=0, maximum=240,
    )
    dead_letter: bool = setting(
        False, "Also dead-letter undecodable requests (the rendezvous already does; off avoids duplicates)."
    )
    co_host: tuple[str, ...] = setting(
        (), "More models this worker scores with, NAME=SPEC,... (each under its own version). They share the "
        "worker's consumer group, micro-batches and commits: one fetch and one produce request serve them all, "
        "so the broker does less work per request; but a slow or failing model holds up the others' scores. "
        "Default group then: <prefix>model.<name>+<name>...: a new group, which starts at --start-from (by "
        "default every request still kept, scored again: give --start-from latest or --start-at when a model "
        "moves in or out of a worker)."
    )

    def validate(self) -> None:
        if not self.model:
            raise ConfigError("--model is required (e.g. --model demo:champion)")
        if self.max_batch < 1:
            raise ConfigError(f"--max-batch must be >= 1, got {self.max_batch}")
        if self.start_from not in ("earliest", "latest"):
            raise ConfigError(f"--start-from must be earliest or latest, got {self.start_from!r}")
        if self.name:
            check_model_name(self.name, "--name")
        if len(self.version) > MAX_VERSION_CHARS:  # the rendezvous would refuse every score
            raise ConfigError(f"--version is {len(self.version)} characters long: at most {MAX_VERSION_CHARS}")
        self.start_at_ms(runtime.now_ms())
        self.co_hosted()

    def start_at_ms(self, now_ms: int) -> int | None:
        """--start-at as epoch ms (None when not set)."""
        return parse_start_at(self.start_at, now_ms)

    def extra_features(self) -> str:
        """The signature's policy for features outside it: reject (default) or ignore."""
        return extra_features_policy(self.ignore_extra_features)

    def instance_id(self) -> str:
        return self.instance or f"{socket.gethostname()}-{os.getpid()}"

    def co_hosted(self) -> list[tuple[str, str]]:
        """--co-host as (name, spec) pairs."""
        return parse_co_host(self.co_host)

    def group_id(self, model_names: list[str]) -> str:
        """The worker's consumer group: its own for every set of models scored together."""
        return self.group or model_group(self.topic_prefix, model_names)


def model_groups(prefix: str, group_ids: list[str]) -> dict[str, str]:
    """Model name -> the consumer group that scores with it, from the groups' names: model.<name>,
    or model.<a>+<b>+... of a worker with co-hosted models (a group given with --group is not found)."""
    found: dict[str, str] = {}
    for group in sorted(group_ids, key=len):  # a model's own group wins over a co-hosted one
        if group.startswith(f"{prefix}model."):
            names = group[len(f"{prefix}model."):]
            found.setdefault(names, group)  # a model alone in its group, even one named with a '+'
            for name in names.split("+"):
                found.setdefault(name, group)
    return found


FUTURE_SLACK_MS = 60_000  # clocks of the machines that set and read --start-at may differ


def parse_start_at(text: str, now_ms: int) -> int | None:
    """A --start-at value as epoch ms (None when empty); `deploy` checks it with this too."""
    if not text:
        return None
    from services.core.ranges import TimeBound, parse_bound, parse_duration_ms

    text = text.strip()
    forms = "a time (ISO like 2026-05-01T12:00:00Z, or epoch ms) or a duration ago (90s, 10m, 2h)"
    try:
        if text[-1:].isalpha() and not text.lower().startswith("offset:") and "T" not in text:
            return now_ms - parse_duration_ms(text, "--start-at")
        bound = parse_bound(text, "--start-at")
    except ConfigError:
        raise ConfigError(f"--start-at: expected {forms}, got {text!r}") from None
    if not isinstance(bound, TimeBound):
        raise ConfigError(f"--start-at takes {forms}, not an offset")
    if bound.ms > now_ms + FUTURE_SLACK_MS:
        raise ConfigError(f"--start-at {text} is in the future: a new group would score nothing before then "
                          "(give a past time, or a duration ago such as 1h)")
    return bound.ms
