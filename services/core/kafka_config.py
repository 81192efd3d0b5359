"""librdkafka pass-through settings (`--kafka-config key=value`, `RDV_KAFKA_CONFIG`): parsed once,
and never shown with their values except for an allow-list of settings known to hold no secret.

Masking by allow-list rather than by spotting secret-looking names: a misspelled key
(`sasl.pasword`), an unusual one (`sasl.oauthbearer.config=clientSecret=...`) or one this list
does not know is masked too. A malformed item is never echoed: errors name it by position, and
by its key only when the key is a known librdkafka property or looks like one.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from typing import Any

from services.core.errors import ConfigError
from services.core.redaction import MASK, never_print

FLAG = "--kafka-config"

# Every client's, unless --kafka-config names it. librdkafka paces the connections it opens to
# brokers it learns of (a partition's leader, one to ask for a producer id) at half its
# reconnect.backoff.ms: at the default 100 ms, a fresh client's first record waited ~48 ms for
# its leader's connection ('still suppressed for 49ms' in its debug log), and a Client took ~64 ms
# to make. It is also the first pause before reconnecting to a broker lost, doubled at each try up
# to reconnect.backoff.max.ms (10 s): a few more tries in an outage's first second.
CONNECTION_DEFAULTS: dict[str, str] = {"reconnect.backoff.ms": "10"}


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


# librdkafka properties whose values are shown in logs and errors (CONFIGURATION.md of librdkafka).
SHOWN = _names("""
    bootstrap.servers metadata.broker.list client.id client.rack client.dns.lookup
    acks request.required.acks linger.ms queue.buffering.max.ms queue.buffering.max.messages
    queue.buffering.max.kbytes batch.size batch.num.messages compression.type compression.codec
    compression.level enable.idempotence enable.gapless.guarantee max.in.flight.requests.per.connection
    max.in.flight message.max.bytes message.copy.max.bytes receive.message.max.bytes message.timeout.ms
    delivery.timeout.ms request.timeout.ms retries message.send.max.retries retry.backoff.ms
    retry.backoff.max.ms reconnect.backoff.ms reconnect.backoff.max.ms partitioner
    sticky.partitioning.linger.ms transactional.id transaction.timeout.ms
    socket.timeout.ms socket.keepalive.enable socket.nagle.disable socket.send.buffer.bytes
    socket.receive.buffer.bytes socket.connection.setup.timeout.ms socket.max.fails
    connections.max.idle.ms broker.address.family broker.address.ttl api.version.request
    api.version.request.timeout.ms api.version.fallback.ms broker.version.fallback
    topic.metadata.refresh.interval.ms metadata.max.age.ms topic.metadata.refresh.fast.interval.ms
    topic.metadata.refresh.sparse topic.metadata.propagation.max.ms allow.auto.create.topics
    statistics.interval.ms enable.metrics.push debug log_level log.queue log.thread.name
    log.connection.close security.protocol sasl.mechanism sasl.mechanisms sasl.kerberos.service.name
    sasl.kerberos.min.time.before.relogin sasl.oauthbearer.method ssl.endpoint.identification.algorithm
    enable.ssl.certificate.verification ssl.ca.location ssl.ca.certificate.stores ssl.certificate.location
    ssl.crl.location ssl.keystore.location ssl.cipher.suites ssl.curves.list ssl.sigalgs.list ssl.providers
    group.id group.instance.id group.protocol group.protocol.type group.remote.assignor
    partition.assignment.strategy session.timeout.ms heartbeat.interval.ms max.poll.interval.ms
    coordinator.query.interval.ms auto.offset.reset enable.auto.commit auto.commit.interval.ms
    enable.auto.offset.store enable.partition.eof isolation.level check.crcs fetch.min.bytes
    fetch.max.bytes fetch.wait.max.ms fetch.message.max.bytes max.partition.fetch.bytes
    fetch.error.backoff.ms fetch.queue.backoff.ms queued.min.messages queued.max.messages.kbytes
""")

# librdkafka properties that may hold a secret or an identity: known (their names may be shown),
# their values never are. Any other property's value is masked as well.
SECRET = _names("""
    sasl.username sasl.password sasl.oauthbearer.config sasl.oauthbearer.client.id
    sasl.oauthbearer.client.secret sasl.oauthbearer.token.endpoint.url sasl.oauthbearer.extensions
    sasl.oauthbearer.scope sasl.oauthbearer.assertion.private.key.file
    sasl.oauthbearer.assertion.private.key.passphrase sasl.kerberos.keytab sasl.kerberos.principal
    sasl.kerberos.kinit.cmd ssl.key.location ssl.key.password ssl.key.pem ssl.certificate.pem
    ssl.ca.pem ssl.keystore.password ssl.engine.location sasl.jaas.config
""")

KNOWN = SHOWN | SECRET
# Identities, not secrets: not shown in the start-up line, but not masked in every other line
# either. A user name is often a plain word ('rendezvous'): masked wherever it appeared, it
# garbled the very errors that name a missing grant ('not authorized to join group rdv.***').
IDENTITY = frozenset({"sasl.username", "sasl.kerberos.principal", "sasl.oauthbearer.client.id"})

# Properties whose values legitimately hold `,`-separated key=value pairs.
_COMMA_PAIRS = frozenset({"sasl.oauthbearer.extensions"})
_PROPERTY_LIKE = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z0-9_]+)+")
_LEADING_KEY = re.compile(r"\s*([A-Za-z0-9_.\-]+)")
_JOINED = re.compile(r"([,;]|\s)\s*([A-Za-z0-9_.\-]+)\s*=")
_QUOTED = re.compile(r'"([^"]*)"')


def _shown(key: str, value: Any) -> bool:
    """Whether a value may be printed: an allow-listed setting's, unless it holds a `key=` of its
    own (`client.id=me password=x`: another setting glued on, its secret in the shown value)."""
    return key in SHOWN and "=" not in str(value)


def safe_key(key: str) -> bool:
    """A key that may be printed: a known property, or lower-case dotted like one (`sasl.pasword`)."""
    return key in KNOWN or (len(key) <= 64 and _PROPERTY_LIKE.fullmatch(key) is not None)


def _item(position: int, key: str) -> str:
    return f"{FLAG} item {position}" + (f" ({key})" if safe_key(key) else "")


def _remember_value(value: str) -> None:
    """Mask the whole value and each `k=v` part of it (`clientSecret=... scope=...`)."""
    never_print(value)
    for part in re.split(r"[\s,;]+", value):
        never_print(part.partition("=")[2] or part)


def remember_secrets(config: Mapping[str, Any]) -> None:
    """Mask, from here on, every value of `config` not known to be harmless (as `parse` does for
    the items it reads): for a process handed a parsed config (the rescue, by its stdin)."""
    for key, value in config.items():
        if not _shown(key, value) and key not in IDENTITY:
            _remember_value(str(value))


def parse(items: Iterable[str]) -> dict[str, str]:
    """`key=value` items -> a librdkafka config. Every value not known to be harmless is
    remembered as never to be printed, before anything can fail."""
    config: dict[str, str] = {}
    settings: dict[str, str] = {}  # the setting each key names (librdkafka's aliases as one) -> the key
    errors: list[str] = []
    for position, item in enumerate(items, start=1):
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not key:
            _remember_value(item)
            errors.append(_malformed(position, item))
            continue
        if not _shown(key, value) and key not in IDENTITY:
            _remember_value(value)
        joined = _joined_key(key, value)
        if joined is not None:
            glue, name = joined
            errors.append(
                f"{_item(position, key)}: its value continues with "
                f"{'a ' + name if safe_key(name) else 'another'} key=value after {glue}; "
                f"give each setting its own {FLAG}, or separate them by ';' in RDV_KAFKA_CONFIG ('a=1;b=2')"
            )
            continue
        unsupported = _unsupported(key, value)
        if unsupported is not None:
            errors.append(f"{_item(position, key)}: {unsupported}")
            continue
        if key in config:  # the last one won silently: a password given twice, say (a probe)
            errors.append(f"{_item(position, key)}: its key is given twice: one value each")  # a key may be a secret
            continue
        setting = _ALIASES.get(key, key)
        same = settings.get(setting)
        if same is not None:  # librdkafka takes the last of two aliases: sasl.mechanisms=PLAIN won silently
            errors.append(f"{_item(position, key)}: it names the setting {_item_key(same)} names (librdkafka's alias): "
                          "give it once")
            continue
        config[key] = value
        settings[setting] = key
    if not errors:
        errors = _unused_security(config)
    if errors:
        raise ConfigError("; ".join(errors) + " (values not shown)")
    return config


# librdkafka's aliases: two names of one setting (CONFIGURATION.md), the later one winning.
_ALIASES = {
    "sasl.mechanisms": "sasl.mechanism", "request.required.acks": "acks", "compression.codec": "compression.type",
    "queue.buffering.max.ms": "linger.ms", "message.send.max.retries": "retries",
    "max.in.flight": "max.in.flight.requests.per.connection",
}


def _item_key(key: str) -> str:
    return key if safe_key(key) else "another item"


def _unused_security(config: Mapping[str, str]) -> list[str]:
    """SASL or TLS settings the security protocol makes librdkafka ignore: given credentials or a CA,
    a command ran in plaintext, or as no user, without a word (a review)."""
    protocol = config.get("security.protocol", "plaintext").strip().lower()
    found = []
    sasl = sorted(k for k in config if k.startswith("sasl."))
    if sasl and not protocol.startswith("sasl_"):
        found.append(f"{', '.join(map(_item_key, sasl))} given with security.protocol={protocol}, which uses no "
                     "SASL: set security.protocol=SASL_SSL (or SASL_PLAINTEXT)")
    if protocol.startswith("sasl_") and not {"sasl.mechanism", "sasl.mechanisms"} & set(config):
        # librdkafka's default is GSSAPI, which its wheels lack: 'No provider for SASL mechanism
        # GSSAPI: recompile librdkafka', for a mechanism nobody asked for (a review).
        found.append(f"security.protocol={protocol} given without sasl.mechanism: set sasl.mechanism=PLAIN, "
                     "SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER (or GSSAPI, where librdkafka has Kerberos)")
    tls = sorted(k for k in config if k.startswith("ssl."))
    if tls and protocol not in ("ssl", "sasl_ssl"):
        found.append(f"{', '.join(map(_item_key, tls))} given with security.protocol={protocol}, which uses no "
                     "TLS: set security.protocol=SSL (or SASL_SSL)")
    if "ssl.certificate.location" in config and not {"ssl.key.location", "ssl.key.pem"} & set(config):
        found.append("ssl.certificate.location given without ssl.key.location: a client certificate needs its key")
    return found



# What is given elsewhere, or set by each service for its own clients, and so refused here: the
# brokers replaced --bootstrap without a word while the start-up line showed its value; the ids were
# overwritten by the service's own without a word (a probe).
_OWNED = {
    "bootstrap.servers": "the brokers are given with --bootstrap (KAFKA_BOOTSTRAP_SERVERS), not here",
    "metadata.broker.list": "the brokers are given with --bootstrap (KAFKA_BOOTSTRAP_SERVERS), not here",
    "group.id": "each service names its consumer group (--group where it has one), not here",
    "group.instance.id": "a replica's static membership id is --instance, not here",
    "transactional.id": "each service derives its transactional ids from its group and instance, not here",
}


def _unsupported(key: str, value: str) -> str | None:
    """Why a setting librdkafka would take is refused here, if it is."""
    owned = _OWNED.get(key)
    if owned is not None:
        return owned
    # Given true it won over the services' own commits: offsets committed before the work behind them was done.
    if key == "enable.auto.commit" and value.lower() not in ("false", "f", "0", "no", "off"):
        return ("the services commit only finished work themselves (docs/architecture.md, \"Commit orders\"): "
                "an automatic commit would skip records not yet processed after a crash; leave it unset")
    if key == "group.protocol" and value.lower() != "classic":
        # KIP-848's assignment is incremental: the co-partitioned recovery (partition p of requests
        # and scores taken over as a unit) and the skeleton's assign/revoke handling assume eager.
        return ("only the classic group protocol is supported (KIP-848's incremental assignment is not "
                "handled by the co-partitioned recovery): leave group.protocol unset or classic "
                "(docs/failover.md, \"Why the classic protocol, not KIP-848\")")
    if key == "partition.assignment.strategy" and "cooperative" in value.lower():
        # The services take and give back partitions eagerly (assign, not incremental_assign): under a
        # cooperative assignor librdkafka refuses that at the first rebalance, and the service stops.
        return ("the cooperative-sticky assignor is not supported (the services' consumers take their "
                "partitions eagerly, and the rendezvous recovers partition p of requests and scores as a unit): "
                "leave partition.assignment.strategy unset, or range / roundrobin")
    return None


def _malformed(position: int, item: str) -> str:
    """Why an item without `key=` is wrong, without showing it."""
    leading = _LEADING_KEY.match(item)
    if leading is None or not safe_key(leading.group(1)):
        return f"{FLAG} item {position}: expected key=value"
    key = leading.group(1)
    rest = item[leading.end():]
    separator = rest[:1]
    if separator and not separator.isspace():
        return f"{FLAG} item {position} ({key}): expected key=value, found {separator!r} where '=' belongs"
    return f"{FLAG} item {position} ({key}): expected key=value, found no '='"


def _joined_key(key: str, value: str) -> tuple[str, str] | None:
    """(what glued it, its key) of a second setting glued on with `,`, `;` or a space
    (`SASL_SSL;sasl.password=x`), if any."""
    if key in _COMMA_PAIRS:
        return None
    for match in _JOINED.finditer(value):
        glue, candidate = match.group(1), match.group(2)
        if candidate in KNOWN or _PROPERTY_LIKE.fullmatch(candidate):
            return ("a space" if glue.isspace() else repr(glue)), candidate
    return None


def masked(config: Mapping[str, Any]) -> dict[str, Any]:
    """A copy safe to log: values shown only for the allow-list (`SHOWN`), and a key only if it
    looks like a property name (`sasl.password:x,security.protocol` holds a secret in its key)."""
    return {(k if safe_key(k) else f"<key {i} not shown>"): (v if _shown(k, v) else MASK)
            for i, (k, v) in enumerate(config.items(), start=1)}


def describe_refusal(text: str, config: Mapping[str, Any]) -> str:
    """librdkafka's message for a configuration it refused, without any value it quotes
    (`Invalid value "..." for configuration property "..."`), plus a spelling hint."""

    hidden = {str(v) for k, v in config.items() if not _shown(k, v)}
    shown = {str(v) for k, v in config.items() if _shown(k, v)}

    def keep_or_mask(match: re.Match[str]) -> str:
        quoted = match.group(1)
        harmless = quoted not in hidden and (safe_key(quoted) or quoted in shown)
        return match.group(0) if harmless else f'"{MASK}"'

    cleaned = _QUOTED.sub(keep_or_mask, text)
    unknown = [k for k in config if k not in KNOWN and safe_key(k) and f'"{k}"' in cleaned]
    hints = [f"{k}: did you mean {m[0]}?" for k in unknown if (m := difflib.get_close_matches(k, KNOWN, n=1))]
    if cleaned.startswith("No such configuration property") and f'"{MASK}"' in cleaned:
        hints.append("a key that does not look like a librdkafka property (lower-case, dotted: sasl.mechanism) "
                     "is not shown, in case it is a secret typed in the wrong place")
    return cleaned + (f" ({'; '.join(hints)})" if hints else "")
