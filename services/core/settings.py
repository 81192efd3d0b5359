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
import logging
import math
import os
import re
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

from services.core import kafka_config
from services.core.errors import ConfigError
from services.core.numbers import ascii_float, ascii_int
from services.core.urls import HOST, MAX_PORT, checked_http_url, shown_url_safely

log = logging.getLogger(__name__)
ENV_PREFIX = "RDV_"
# Numbers a setting accepts unless it declares its own bounds: never negative, and small enough
# for every use (Kafka's int32 fields, epoch-ms arithmetic, `threading` timeouts).
INT_RANGE = (0, 2**31 - 1)
FLOAT_RANGE = (0.0, 1e9)

T = TypeVar("T")


def setting(
    default: Any,
    help: str,
    *,
    env: str | None = None,
    flag: str | None = None,
    secret: bool = False,
    separator: str = ",",
    split_flags: bool = True,
    minimum: float | None = None,
    maximum: float | None = None,
    above: float | None = None,
    if_empty: str | None = None,
    identifier: bool = False,
) -> Any:
    """A dataclass field with its --help text and optional env/flag name overrides.

    `secret=True` keeps the value out of `repr()` (and so out of every log line).
    `separator` splits tuple values given in one flag or env variable (a,b,c); with
    `split_flags=False` only the env variable's (each flag is one item: it may hold the separator).
    `minimum`/`maximum` bound a number (default: `INT_RANGE` / `FLOAT_RANGE`); `above` is an
    exclusive lower bound (a duration or a rate that must be more than 0); `from_namespace`
    refuses anything outside with one clear line, for every command. `if_empty`: a text or a list
    that may not be given empty (blank, or only separators), and what to say when it is.
    `identifier`: a name or an id (a group, an instance, a version), refused with spaces around it
    or a control character in it.
    """
    meta = {"help": help, "env": env, "flag": flag, "separator": separator, "split_flags": split_flags,
            "secret": secret, "minimum": minimum, "maximum": maximum, "above": above, "if_empty": if_empty,
            "identifier": identifier}
    if isinstance(default, (list, dict, set)):
        raise TypeError("use tuples for sequence defaults: settings are frozen")
    return field(default=default, metadata=meta, repr=not secret)


def is_secret(key: str) -> bool:
    """Whether a librdkafka setting's value is hidden (every one not known to be harmless)."""
    return key not in kafka_config.SHOWN


def redact(config: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a librdkafka config that is safe to log."""
    return kafka_config.masked(config)


def parse_pairs(items: tuple[str, ...] | list[str], what: str) -> tuple[tuple[str, str], ...]:
    """`key=value` items, each key once: every caller reads them as a mapping, where a key given
    again silently replaced the first (`--principal client=alice --principal client=bob` granted
    alice nothing; a review)."""
    pairs: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{what} expects key=value, got {item!r}")
        if key.strip() in pairs:
            raise ConfigError(f"{what} {key.strip()} is given twice: one value each")
        pairs[key.strip()] = value.strip()
    return tuple(pairs.items())


# What Kafka accepts as a topic name (its Topic.validate); anything else is refused before the
# name reaches librdkafka, which raises on some of them (an embedded NUL) instead of answering.
LEGAL_TOPIC = re.compile(r"[a-zA-Z0-9._-]{1,249}")


def legal_topic(name: str) -> bool:
    return name not in (".", "..") and LEGAL_TOPIC.fullmatch(name) is not None


# The most records one poll may ask for: confluent-kafka's consume() refuses more (ValueError), on
# the first record, with a traceback (a review: --max-batch 2000000 was accepted).
MAX_BATCH = 1_000_000

TOPIC_ROLES = ("requests", "scores", "answers", "log", "control", "deadletter", "replies", "models")


@dataclass(frozen=True)
class Topics:
    """The topic names of one deployment (docs/architecture.md, "Contracts")."""

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
        names = {role: overrides.get(role, prefix + role) for role in TOPIC_ROLES}
        for role, name in names.items():
            if not legal_topic(name):
                how = "--topic" if role in overrides else "--topic-prefix"
                several = " (several overrides are separated by ',')" if how == "--topic" and ";" in name else ""
                raise ConfigError(f"{how}: {name!r} ({role}) is not a topic name Kafka accepts: 1 to 249 of "
                                  f"letters, digits, '.', '_' and '-'{several}")
            if name.startswith("__"):  # __consumer_offsets was taken, and the admin granted ALL on it (a probe)
                how = "--topic" if role in overrides else "--topic-prefix"
                raise ConfigError(f"{how}: {name!r} ({role}) starts with '__', which Kafka keeps for its internal "
                                  "topics (__consumer_offsets, __transaction_state)")
        roles_of: dict[str, list[str]] = {}
        for role, name in names.items():
            roles_of.setdefault(name, []).append(role)
        shared = {name: roles for name, roles in roles_of.items() if len(roles) > 1}
        if shared:
            name, roles = next(iter(shared.items()))
            raise ConfigError(f"--topic: {' and '.join(roles)} would both be {name!r}: each role needs its own topic")
        return cls(**names)


_PORT = re.compile(r"[0-9]{1,5}")


# The prefixes librdkafka reads before a bootstrap entry's host (any case).
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")


def check_bootstrap(bootstrap: str, protocol: str | None = None) -> None:
    """--bootstrap as librdkafka reads it: host[:port] entries, comma-separated (a typo such as an
    empty entry or a trailing ':' was waited on for --connect-timeout-s, then blamed on no broker).
    An entry's scheme, if any, must be `protocol` (the client's security.protocol, when given):
    librdkafka skips one that is not ("does not match security.protocol"), and the wait ended "no
    broker answered" (a review)."""
    if not bootstrap:
        return  # the local broker
    if "@" in bootstrap:
        # user:password@host was taken for a host name, then shown in the start-up line and in
        # "no broker answered at ...": credentials go in --kafka-config's sasl.* settings.
        raise ConfigError("--bootstrap (value not shown) has a user or password before an '@': give host:port "
                          "entries only, credentials as --kafka-config sasl.username/sasl.password (docs/security.md)")
    for entry in bootstrap.split(","):
        scheme, _, address = entry.strip().rpartition("://")  # PLAINTEXT://host:port is accepted too
        if scheme and scheme.upper() not in SECURITY_PROTOCOLS:
            # librdkafka skips such an entry without a word, and the wait ended "no broker answered".
            raise ConfigError(f"--bootstrap {bootstrap!r}: {scheme}:// is no Kafka security protocol (one of "
                              f"{', '.join(SECURITY_PROTOCOLS)}, or none: host:port)")
        if scheme and protocol is not None and scheme.upper() != protocol.strip().upper():
            raise ConfigError(f"--bootstrap {bootstrap!r}: {scheme}:// is not the security.protocol the client uses "
                              f"({protocol}): set --kafka-config security.protocol={scheme.upper()}, or give host:port")
        if ":" not in address or address.endswith("]"):  # a host alone ([::1] too), on the default port
            host, port = address, "9092"
        else:
            host, _, port = address.rpartition(":")
        bare = host.removeprefix("[").removesuffix("]")
        if not bare or not HOST.fullmatch(bare) or not _PORT.fullmatch(port) or not 0 < int(port) <= MAX_PORT:
            raise ConfigError(f"--bootstrap {bootstrap!r}: expected host:port entries separated by commas, "
                              f"got {entry.strip()!r}")


WIRE_FORMATS = ("single-object", "registry")


def _default_of(f: dataclasses.Field[Any]) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def check_wire_format(wire_format: str, schema_registry: str) -> None:
    """--wire-format and --schema-registry, for every command (those that write nothing took any
    value without a word: a probe); the registry's credentials are checked where it is used
    (services/core/wire.py `configure`)."""
    if wire_format not in WIRE_FORMATS:
        raise ConfigError(f"--wire-format must be one of {', '.join(WIRE_FORMATS)}, got {wire_format[:80]!r}")
    if wire_format == "registry" and not schema_registry:
        raise ConfigError("--wire-format registry needs --schema-registry URL (env RDV_SCHEMA_REGISTRY)")
    if schema_registry:
        checked_http_url(schema_registry, "--schema-registry")


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
        (), "Override one topic name, e.g. --topic requests=prod.requests (repeatable; several in one flag or "
        "in RDV_TOPIC are separated by ',', not the ';' of RDV_KAFKA_CONFIG)."
    )
    kafka_config: tuple[str, ...] = setting(
        (),
        "librdkafka setting passed through untouched, e.g. --kafka-config security.protocol=SASL_SSL "
        "(repeatable, one setting per flag: a value may hold ';'; env: separated by ';'). Values are never logged, "
        "except of settings known to hold no secret (security.protocol, acks, ...).",
        secret=True,
        separator=";",
        split_flags=False,
    )

    connect_timeout_s: float = setting(
        15.0, "How long to wait for the broker at start-up before failing with a clear error (s).",
        minimum=0.1, maximum=3600,
    )
    wire_format: str = setting(
        "single-object",
        "How records are framed when written: single-object (Avro's own header, needs no registry) or "
        "registry (Confluent Schema Registry framing, magic 0 + schema id, read by Connect, ksqlDB, Flink; "
        "registers the schemas). Both are always read.",
    )
    schema_registry: str = setting(
        "", "URL of a Confluent-compatible schema registry (Confluent, Apicurio's /apis/ccompat/v7, Karapace), "
        "used to read registry-framed records and, with --wire-format registry, to register the schemas; "
        "asked once at start (credentials it refuses, given as user:password@ in the URL, end the command).",
    )

    def librdkafka(self) -> dict[str, str]:
        """Base client config: bootstrap and the connection defaults, then the pass-through keys."""
        config = {"bootstrap.servers": self.bootstrap, **kafka_config.CONNECTION_DEFAULTS}
        config.update(kafka_config.parse(self.kafka_config))
        return config

    def given(self, *names: str) -> list[str]:
        """Those of `names` that were given (by a flag, a variable or the caller of from_namespace);
        for settings made directly, those that differ from their defaults."""
        explicit = self.__dict__.get("_given")
        if explicit is not None:
            return [name for name in names if name in explicit]
        defaults = {f.name: _default_of(f) for f in dataclasses.fields(self) if f.name in names}
        return [name for name in names if getattr(self, name) != defaults[name]]

    def from_environment(self, name: str) -> bool:
        """Whether setting `name` came from its variable, not a flag or the caller (a variable
        may be set for another command of the same container). False for settings made directly:
        only from_namespace knows (and `replaced` carries it); validate() runs there."""
        return name in self.__dict__.get("_from_environment", ())

    def describe(self) -> str:
        """One log line of the settings, with librdkafka secrets redacted."""
        shown = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.repr}
        shown["kafka_config"] = kafka_config.masked(kafka_config.parse(self.kafka_config))
        shown["schema_registry"] = shown_url_safely(self.schema_registry)  # user:password@ left out
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    def topics(self) -> Topics:
        return Topics.from_prefix(self.topic_prefix, dict(parse_pairs(self.topic, "--topic")))


@dataclass(frozen=True)
class ServiceSettings(KafkaSettings):
    """What every long-running service adds: where its /metrics, /healthz and /readyz listen."""

    metrics_port: int = setting(0, "Port of the /metrics, /healthz and /readyz endpoint (0 = off).", maximum=MAX_PORT)
    # Loopback by default: metrics and health say a lot about the traffic and need no outside
    # reader on a laptop. Containers (the image sets RDV_METRICS_HOST=0.0.0.0) open it up.
    metrics_host: str = setting(
        "127.0.0.1", "Address the metrics/health endpoint binds (0.0.0.0: every interface, e.g. in a container).",
        env="RDV_METRICS_HOST",
        # An empty host binds every interface: a blanked variable opened the endpoint to all.
        if_empty="give an address (127.0.0.1, the default: this machine only; 0.0.0.0: every interface)",
    )


def replaced(settings: T, **changes: Any) -> T:
    """`settings` with `changes`, still knowing which settings the command was given and which
    came from variables (`given`, `from_environment`): copied by `dataclasses.replace` alone, a
    command on the local broker (its bootstrap filled in) took every default it was given for not
    given, and `rollback --to 0` published a rollback that `--bootstrap` refused (a review)."""
    copy = dataclasses.replace(settings, **changes)  # type: ignore[type-var]
    for mark in ("_given", "_from_environment"):
        if mark in settings.__dict__:
            object.__setattr__(copy, mark, settings.__dict__[mark])
    return copy


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
        bounds = ""
        if kind in (int, float):  # every number is bounded, by its own range or INT_RANGE / FLOAT_RANGE
            low, high = _bounds(f, kind)
            above = f.metadata.get("above")
            bounds = f"; {_shown(low)}..{_shown(high)}"
            if above is not None:
                bounds = f"; above {_shown(above)}, at most {_shown(high)}"
        text = f"{f.metadata.get('help', '')} [env {_env_name(f)}; default: {shown!r}{bounds}]".replace("%", "%%")
        flag = _flag_name(f)
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif kind is tuple:
            parser.add_argument(flag, action="append", default=None, help=text, dest=f.name)
        else:
            metavar = flag.removeprefix("--").replace("-", "_").upper()  # --from: FROM, not the field's FROM_
            parser.add_argument(flag, default=None, help=text, dest=f.name, metavar=metavar)


def _number(name: str, kind: Any, raw: Any, shown: str) -> int | float:
    """A number in the field's type; `ConfigError` (never OverflowError/ValueError) otherwise."""
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        value: int | float = kind(raw) if kind is float or float(raw).is_integer() else raw
    else:
        text = str(raw).strip()
        try:
            value = (ascii_int if kind is int else ascii_float)(text)
        except ValueError:
            what = "a whole number" if kind is int else "a number"
            raise ConfigError(f"{name}: expected {what}, got {shown}") from None
    if kind is int and not isinstance(value, int):
        raise ConfigError(f"{name}: expected a whole number, got {shown}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{name}: expected a finite number, got {shown}")
    return value


def _bounds(f: dataclasses.Field[Any], kind: Any) -> tuple[float, float]:
    """The field's declared (minimum, maximum), each defaulting to INT_RANGE / FLOAT_RANGE."""
    low, high = INT_RANGE if kind is int else FLOAT_RANGE
    minimum, maximum = f.metadata.get("minimum"), f.metadata.get("maximum")
    return (low if minimum is None else minimum, high if maximum is None else maximum)


def _check_range(name: str, value: float, f: dataclasses.Field[Any], kind: Any) -> None:
    low, high = _bounds(f, kind)
    above = f.metadata.get("above")
    if above is not None and value <= above:
        raise ConfigError(f"{name} must be above {_shown(above)}, got {_shown(value)}")
    if value < low:
        raise ConfigError(f"{name} must be at least {_shown(low)}, got {_shown(value)}")
    if value > high:
        raise ConfigError(f"{name} must be at most {_shown(high)}, got {_shown(value)}")


def _shown(number: float) -> str:
    """1 -> '1', 2.5 -> '2.5', 1e20 -> '100000000000000000000', a 5000-digit int -> its start."""
    # An int is shown as itself: float() of a 400-digit one raised OverflowError (a traceback).
    text = str(number) if isinstance(number, int) else str(int(number)) if number.is_integer() else f"{number:g}"
    return text if len(text) <= 24 else text[:12] + "..." + f" ({len(text)} digits)"


def _excerpt(raw: Any, limit: int = 40) -> str:
    text = repr(raw)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(str(raw))} characters)"


def _convert(name: str, kind: Any, raw: Any, separator: str | None = ",", secret: bool = False) -> Any:
    """`separator` None: a tuple's items are taken whole (repeated flags)."""
    shown = "a value (not shown)" if secret else _excerpt(raw)
    _check_utf8(name, raw)
    if kind is tuple:
        items = [raw] if isinstance(raw, str) else list(raw)
        parts = [part.strip() for item in items for part in ([item] if separator is None else item.split(separator))]
        _check_no_gap(name, items, parts, separator)
        return tuple(part for part in parts if part)
    if kind is bool and isinstance(raw, str):
        lowered = raw.strip().lower()
        if lowered not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            raise ConfigError(f"{name}: expected true/false, got {shown}")
        return lowered in ("1", "true", "yes", "on")
    if kind in (int, float):
        return _number(name, kind, raw, shown)
    return raw


def gap_in(parts: list[str]) -> int | None:
    """The index of the first empty part between two others (`a,,b`), if any; empty parts at
    either end are no gap."""
    filled = [k for k, part in enumerate(parts) if part]
    return next((k for k in range(filled[0], filled[-1]) if not parts[k]), None) if filled else None


def _check_no_gap(name: str, items: list[str], parts: list[str], separator: str | None) -> None:
    """An empty item between two others (`--models a,,b`) dropped what the operator meant to give
    there. Empty ones at either end are dropped as before (`export RDV_KAFKA_CONFIG="$X;a=b"` with
    X unset). Named by position: the value may be a secret pasted by mistake."""
    gap = gap_in(parts)
    if gap is not None:
        what = f"a doubled '{separator}'" if separator else "an empty flag among others"
        if separator and len(items) > 1:  # several flags: the gap may be a flag given empty
            what += f" or an empty {name}"
        raise ConfigError(f"{name}: item {gap + 1} of {len(parts)} is empty ({what}?)")


def _check_identifier(name: str, value: Any) -> None:
    """A group, an instance or a version as given: `--group ' '` named a group of one space, and a
    worker's --version of two lines was written on every score and in its metric labels (a probe).
    Only names: free text (a comment, a JSON row pretty-printed) and paths may hold what they like."""
    if not isinstance(value, str):
        return
    if _CONTROL.search(value):
        raise ConfigError(f"{name} {_excerpt(value)} holds a control character (a newline, a tab?)")
    if value != value.strip():
        raise ConfigError(f"{name} {_excerpt(value)} has spaces around it: give it without (or leave it unset)")


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _check_utf8(name: str, raw: Any) -> None:
    """Bytes that are not UTF-8 on the command line or in a variable reach Python as lone
    surrogates: librdkafka, a socket's host name or a log line then failed with a traceback (a
    review: SystemError from the Kafka client's constructor). Refused here, by name."""
    for item in [raw] if isinstance(raw, str) else (raw if isinstance(raw, (list, tuple)) else []):
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise ConfigError(f"{name}: holds bytes that are not UTF-8 text") from None


def from_namespace(cls: type[T], args: argparse.Namespace | None = None, **overrides: Any) -> T:
    """Build the frozen settings: explicit overrides > CLI flag > env variable > default.

    Everything is checked here, before a command does anything: types, the bounds of every
    number, the Kafka pass-through settings and topic overrides, then the class's `validate()`.
    """
    hints = get_type_hints(cls)
    values: dict[str, Any] = {}
    env_fields: set[str] = set()  # the fields whose value came from a variable
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        kind = _base_type(hints[f.name])
        raw = overrides.get(f.name)
        name = _flag_name(f)
        if raw is None and args is not None:
            raw = getattr(args, f.name, None)
            if raw is not None and os.environ.get(_env_name(f)) is not None:
                # The flag wins, as it should; said, since the variable may carry what the flag
                # lacks (RDV_KAFKA_CONFIG's SASL settings replaced by --kafka-config acks=all: a probe).
                log.warning("%s is given: %s, set too, is not used (values not shown)", name, _env_name(f))
        separator = f.metadata.get("separator", ",")
        if raw is not None and not f.metadata.get("split_flags", True):
            separator = None
        if raw is None:
            raw = os.environ.get(_env_name(f))
            # A value from the environment is named as such: the flag was never typed (and a
            # variable left over from another command is otherwise hard to find).
            if raw is not None:
                env_fields.add(f.name)
            name = f"{_env_name(f)} (the environment's {name})"
        if raw is None:
            continue
        value = _convert(name, kind, raw, separator, bool(f.metadata.get("secret")))
        if f.metadata.get("identifier"):
            _check_identifier(name, value)
        if f.metadata.get("if_empty") and not (value.strip() if isinstance(value, str) else value):
            raise ConfigError(f"{name} is empty: {f.metadata['if_empty']}")
        if kind in (int, float):
            _check_range(name, value, f, kind)
        values[f.name] = value
    settings = cls(**values)
    # Which settings were given (a flag, a variable, the caller), for checks a default cannot tell
    # apart from a value equal to it (KafkaSettings.given).
    object.__setattr__(settings, "_given", frozenset(values))
    object.__setattr__(settings, "_from_environment", frozenset(env_fields))
    try:
        if isinstance(settings, KafkaSettings):
            check_wire_format(settings.wire_format, settings.schema_registry)
            check_bootstrap(settings.bootstrap, settings.librdkafka().get("security.protocol", "plaintext"))
            settings.topics()
        validate = getattr(settings, "validate", None)
        if callable(validate):
            validate()
    except ConfigError as err:
        from_env = {_flag_name(f): _env_name(f) for f in dataclasses.fields(cls) if f.name in env_fields}  # type: ignore[arg-type]
        raise _from_env(err, from_env) from None
    return settings


_QUOTED = re.compile(r"""(?<!\w)('[^']*'|"[^"]*")(?!\w)""")


def _from_env(err: ConfigError, from_env: dict[str, str]) -> ConfigError:
    """`err` with the flag it is about, when that flag was not typed (its value came from a
    variable), named as that variable, as the type checks above name it."""
    text = str(err)
    opener = None
    for flag, variable in from_env.items():
        # The flag the message is about (it opens it): in "--a, --b and --c must be ..." none is.
        if re.match(rf"{re.escape(flag)}(?![\w-])(?!,| and )", text):
            opener, text = flag, f"{variable} (the environment's {flag}){text[len(flag):]}"
            break
    # The other flags it names ("give exactly one of --features, --file or --demo-rows"), those set
    # by a variable said after it, or the user looks for a flag they never typed. Searched in the
    # message as raised, after its opener, without its quoted values (a value that spells a flag
    # names none; a quote counts only at a word's edge: "the file's name" quotes nothing).
    unquoted = _QUOTED.sub("", str(err)[len(opener or ""):])
    named = [f"{flag} by {variable}" for flag, variable in from_env.items()
             if flag != opener and re.search(rf"{re.escape(flag)}(?![\w-])", unquoted)]
    if named:
        text = f"{text} (set in the environment: {', '.join(named)})"
    return err if text == str(err) else type(err)(text)


def check_writable_directory(path: str, flag: str) -> None:
    """ConfigError unless `path` is a directory this process may write, or one it may create (its
    nearest existing ancestor is a writable directory): said at start, not after the broker was
    reached. Nothing is created here."""
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ConfigError(f"{flag} {path}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        verb = "write there" if existing == os.path.abspath(path) else f"create it (in {existing})"
        raise ConfigError(f"{flag} {path}: this process may not {verb}")


def not_a_readable_file(path: str | os.PathLike[str]) -> str | None:
    """Why `path` cannot be read as a file ("no such file", "is a directory", ...), or None."""
    if "\0" in os.fspath(path):  # the OS takes no such name (os.path would say "no such file", resolve() raise)
        return "a path cannot hold a NUL character"
    if os.path.isdir(path):
        return "is a directory, not a file"
    if not os.path.exists(path):
        return "no such file"
    if not os.path.isfile(path):
        return "is not a regular file (a device or a pipe)"
    return None


def check_writable_file(path: str, flag: str) -> None:
    """ConfigError unless a file can be written at `path` (its directory exists and is writable)."""
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ConfigError(f"{flag} {path}: is a directory, not a file")
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise ConfigError(f"{flag} {path}: {directory} is not a directory")
    if not os.path.isdir(directory):
        raise ConfigError(f"{flag} {path}: no such directory {directory}")
    if not os.access(directory, os.W_OK | os.X_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise ConfigError(f"{flag} {path}: this process may not write there")


OUTPUT_FORMATS = ("table", "json")


def check_format(value: str) -> None:
    """`--format` of the report-like commands: table (for people) or json (for scripts)."""
    if value not in OUTPUT_FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(OUTPUT_FORMATS)}, got {value!r}")
