"""What goes on the wire: single-object encoding (default) or schema-registry framing.

Set once per process, before any record is written (`configure`, called by every command
with its settings). Readers accept both framings whatever is written; registry-framed records
need `--schema-registry` to resolve their ids.

Writing with registry framing registers each record's schema under the subjects of the topics
that carry it, the Confluent default (TopicNameStrategy: `rdv.requests-value`, ...), so tools
such as ksqlDB find a topic's schema by its name.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

from services.core.codec import CODEC_NAMES, Codec, codec
from services.core.errors import ConfigError
from services.core.id_lookup import Access, IdLookup
from services.core.registry import Outage, RegistryError, SchemaRegistry
from services.core.settings import KafkaSettings, Topics, check_wire_format

log = logging.getLogger(__name__)


# The record type each topic role carries (the contracts in docs/architecture.md).
ROLE_RECORDS = {
    "requests": "request", "scores": "score", "answers": "answer", "replies": "answer",
    "log": "comparison", "deadletter": "deadletter", "control": "schedule", "models": "model_info",
}


def configure(settings: KafkaSettings, *, check_credentials: bool = True) -> None:
    """Apply `--wire-format` and `--schema-registry` to every codec of this process; the
    registry's credentials checked at once unless `check_credentials` is False."""
    check_wire_format(settings.wire_format, settings.schema_registry)  # as every command's settings do
    if not settings.schema_registry:
        return
    if credentials_in_clear(settings.schema_registry):
        log.warning("--schema-registry (value not shown) has a user and password and plain http: every request to "
                    "the registry sends them in clear; use https")
    registry = SchemaRegistry(settings.schema_registry)
    if settings.wire_format == "registry":
        register_all(registry, settings.topics())  # refused credentials fail it, in one line
    elif check_credentials:
        check_registry_credentials(registry)
    # Last: a check that failed leaves the process' codecs as they were (a test's, say, pointing
    # every later one of its process at a registry gone: their records waited for it).
    read_ids(registry, [codec(name) for name in CODEC_NAMES])


def credentials_in_clear(url: str) -> bool:
    """Whether a registry URL has a user or password and plain http (Basic auth, readable on the wire)."""
    parts = urlsplit(url)
    return parts.scheme.lower() == "http" and (parts.username is not None or parts.password is not None)


def read_ids(
    registry: SchemaRegistry, codecs: Iterable[Codec], per_second: int = 20, clock: Callable[[], float] = time.monotonic
) -> None:
    """Let `codecs` look unseen schema ids up in `registry`: each record type with lookups of its
    own (shared, a flood of made-up ids on the requests topic, which any client may write, spent
    the lookups of every topic: a worker's new Score schema id was dead-lettered with it), and one
    memory of the registry's outage (one record type that found it down spares the others a wait)."""
    codecs = list(codecs)
    outage, access = Outage(), Access(clock=clock)
    # What a 403's question asks for first: an id these credentials were given (its own, registered
    # at start), where the list of subjects may need a global permission per-subject access lacks.
    access.readable = next((c.registry_id for c in codecs if c.registry_id is not None), None)
    for reader in codecs:
        reader.read_registry_ids(IdLookup(registry, per_second, outage, clock, access))


def check_registry_credentials(registry: SchemaRegistry) -> None:
    """Credentials the registry refuses (401) are a misconfiguration, said at start in one line:
    found at the first registry-framed record, they held it, and its partition, for good. A
    registry away or refusing this one call otherwise is only warned of: records framed by it
    wait until it answers (schema_wait.py), as when it fails later."""
    try:
        registry.subjects()
    except RegistryError as exc:
        if exc.status == 401:
            given = "refused the credentials in its URL" if registry.has_credentials else \
                "needs credentials: give them as user:password@ in its URL"
            raise ConfigError(f"--schema-registry {given}: {exc}") from None
        if exc.status == 404 or (exc.status is not None and 300 <= exc.status < 400):
            # Every registry answers /subjects: a 404 or a redirect there is another server, or a
            # wrong base path (Apicurio's is /apis/ccompat/v7), and every record framed by it would
            # wait for good.
            raise ConfigError(f"--schema-registry answers no registry API there ({exc}): is the URL the "
                              "registry's, with its API path?") from None
        log.warning("schema registry not usable at start (%s): records framed by it wait until it answers", exc)


def register_all(registry: SchemaRegistry, topics: Topics) -> None:
    """Register each record's schema under its topics' subjects; encode with the id given."""
    for name in CODEC_NAMES:
        record = codec(name)
        subjects = [f"{getattr(topics, role)}-value" for role, kind in ROLE_RECORDS.items() if kind == name]
        try:
            ids = [registry.register(subject, record.schema) for subject in subjects]
        except RegistryError as exc:
            raise ConfigError(f"cannot register the {name} schema: {exc}") from None
        record.write_registry_id(ids[0])
