"""Frozen settings objects built from CLI flags and environment variables.

Each service declares one frozen dataclass; every field carries its help text in
`metadata["help"]`. `add_arguments` turns the fields into argparse flags and
`from_namespace` resolves each value with the precedence flag > env > default, where the
env variable is `RDV_<FIELD>` (or `metadata["env"]`). librdkafka keys are passed through
untouched with `--kafka-config key=value` (repeatable) and are redacted when printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

from services.core.errors import ConfigError

ENV_PREFIX = "RDV_"
SECRET_MARKERS = ("password", "secret", "token", "key.pem", "private", "sasl.jaas")

T = TypeVar("T")


def setting(
    default: Any,
    help: str,
    *,
    env: str | None = None,
    flag: str | None = None,
    secret: bool = False,
    separator: str = ",",
) -> Any:
    """A dataclass field with its --help text and optional env/flag name overrides.

    `secret=True` keeps the value out of `repr()` (and so out of every log line).
    `separator` splits tuple values given in one flag or env variable (a,b,c).
    """
    meta = {"help": help, "env": env, "flag": flag, "separator": separator}
    if isinstance(default, (list, dict, set)):
        raise TypeError("use tuples for sequence defaults: settings are frozen")
    return field(default=default, metadata=meta, repr=not secret)


def is_secret(key: str) -> bool:
    return any(marker in key.lower() for marker in SECRET_MARKERS)


def redact(config: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a librdkafka config that is safe to log."""
    return {k: ("***" if is_secret(k) else v) for k, v in config.items()}


def parse_pairs(items: tuple[str, ...] | list[str], what: str) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{what} expects key=value, got {item!r}")
        pairs.append((key.strip(), value.strip()))
    return tuple(pairs)


TOPIC_ROLES = ("requests", "scores", "answers", "log", "control", "deadletter", "replies", "models")


@dataclass(frozen=True)
class Topics:
    """The topic names of one deployment (DESIGN.md section 2)."""

    requests: str
    scores: str
    answers: str
    log: str
    control: str
    deadletter: str
    replies: str
    models: str  # compacted: each model's published input contract (schemas/model_info.avsc)

    @classmethod
    def from_prefix(cls, prefix: str, overrides: Mapping[str, str] | None = None) -> Topics:
        overrides = dict(overrides or {})
        unknown = set(overrides) - set(TOPIC_ROLES)
        if unknown:
            raise ConfigError(f"--topic: unknown role(s) {sorted(unknown)}; known: {', '.join(TOPIC_ROLES)}")
        return cls(**{role: overrides.get(role, prefix + role) for role in TOPIC_ROLES})


@dataclass(frozen=True)
class KafkaSettings:
    """Connection settings shared by every service and the CLI."""

    bootstrap: str = setting(
        "",
        "Kafka bootstrap servers (host:port,...). Default: the local broker started by "
        "`rendezvous broker start`.",
        env="KAFKA_BOOTSTRAP_SERVERS",
    )
    topic_prefix: str = setting("rdv.", "Prefix of every topic name (rdv.requests, rdv.scores, ...).")
    topic: tuple[str, ...] = setting(
        (), "Override one topic name, e.g. --topic requests=prod.requests (repeatable)."
    )
    kafka_config: tuple[str, ...] = setting(
        (),
        "librdkafka setting passed through untouched, e.g. --kafka-config security.protocol=SASL_SSL "
        "(repeatable; env: separated by ';'). Secrets are never logged.",
        secret=True,
        separator=";",
    )

    connect_timeout_s: float = setting(
        15.0, "How long to wait for the broker at start-up before failing with a clear error (s)."
    )

    def librdkafka(self) -> dict[str, str]:
        """Base client config: bootstrap plus the pass-through keys."""
        config = {"bootstrap.servers": self.bootstrap}
        config.update(parse_pairs(self.kafka_config, "--kafka-config"))
        return config

    def describe(self) -> str:
        """One log line of the settings, with librdkafka secrets redacted."""
        shown = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.repr}
        shown["kafka_config"] = redact(dict(parse_pairs(self.kafka_config, "--kafka-config")))
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    def topics(self) -> Topics:
        return Topics.from_prefix(self.topic_prefix, dict(parse_pairs(self.topic, "--topic")))


def _env_name(f: dataclasses.Field[Any]) -> str:
    return f.metadata.get("env") or ENV_PREFIX + f.name.upper()


def _flag_name(f: dataclasses.Field[Any]) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _base_type(hint: Any) -> Any:
    """`int | None` -> int; tuple[str, ...] stays tuple."""
    if get_origin(hint) in (types.UnionType,):
        args = [a for a in get_args(hint) if a is not type(None)]
        return args[0]
    return get_origin(hint) or hint


def add_arguments(parser: argparse.ArgumentParser, cls: type[Any]) -> None:
    """Add one flag per settings field; its help names the env variable and the default."""
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = _base_type(hints[f.name])
        default = f.default
        shown = ",".join(default) if isinstance(default, tuple) else default
        text = f"{f.metadata.get('help', '')} [env {_env_name(f)}; default: {shown!r}]".replace("%", "%%")
        flag = _flag_name(f)
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif kind is tuple:
            parser.add_argument(flag, action="append", default=None, help=text, dest=f.name)
        else:
            parser.add_argument(flag, default=None, help=text, dest=f.name, metavar=f.name.upper())


def _convert(name: str, kind: Any, raw: Any, separator: str = ",") -> Any:
    if kind is tuple:
        items = [raw] if isinstance(raw, str) else list(raw)
        return tuple(part.strip() for item in items for part in item.split(separator) if part.strip())
    if kind is bool and isinstance(raw, str):
        lowered = raw.strip().lower()
        if lowered not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            raise ConfigError(f"{name}: expected true/false, got {raw!r}")
        return lowered in ("1", "true", "yes", "on")
    if kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            raise ConfigError(f"{name}: expected a number, got {raw!r}") from None
    return raw


def from_namespace(cls: type[T], args: argparse.Namespace | None = None, **overrides: Any) -> T:
    """Build the frozen settings: explicit overrides > CLI flag > env variable > default."""
    hints = get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        kind = _base_type(hints[f.name])
        raw = overrides.get(f.name)
        if raw is None and args is not None:
            raw = getattr(args, f.name, None)
        if raw is None:
            raw = os.environ.get(_env_name(f))
        if raw is not None:
            values[f.name] = _convert(_flag_name(f), kind, raw, f.metadata.get("separator", ","))
    settings = cls(**values)
    validate = getattr(settings, "validate", None)
    if callable(validate):
        validate()
    return settings
