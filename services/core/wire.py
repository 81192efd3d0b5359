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
from collections.abc import Mapping
from typing import Any

from services.core.codec import CODEC_NAMES, codec
from services.core.errors import ConfigError, DecodeFailed, LookupsSpent
from services.core.rate_limit import PerSecond
from services.core.registry import Outage, RegistryError, SchemaRegistry
from services.core.settings import KafkaSettings, Topics, check_wire_format

log = logging.getLogger(__name__)


# The record type each topic role carries (the contracts in docs/architecture.md).
ROLE_RECORDS = {
    "requests": "request", "scores": "score", "answers": "answer", "replies": "answer",
    "log": "comparison", "deadletter": "deadletter", "control": "schedule", "models": "model_info",
}


# Answers that are the registry's trouble or ours, not the id's: it is asked again later (408
# timeout, 429 too many requests; 401 and 403, credentials refused, perhaps rotated meanwhile).
PASSING_STATUSES = frozenset({401, 403, 408, 429})


class IdLookup:
    """Schema ids to schemas, fetched from the registry. A failure that is the registry's (down,
    5xx, PASSING_STATUSES) or this process' (more than `per_second` fetches, so a flood of records
    with made-up ids cannot turn the poll loop into a stream of HTTP calls: `LookupsSpent`) is
    `retriable`: the codec asks again later. Any other refusal (404: no such id) is the id's; the
    codec remembers it and never asks again."""

    def __init__(self, registry: SchemaRegistry, per_second: int = 20):
        self.registry = registry
        self.per_second = per_second
        self._budget = PerSecond(per_second)
        self._outage = Outage()

    def __call__(self, schema_id: int) -> Mapping[str, Any]:
        outage = self._outage.reason()
        if outage is not None:
            raise DecodeFailed(outage, retriable=True)
        self._spend()
        try:
            return self.registry.schema(schema_id)
        except RegistryError as exc:
            if exc.status is None or exc.status >= 500 or exc.status in PASSING_STATUSES:  # not the id's
                self._outage.record(exc)
                raise DecodeFailed(str(exc), retriable=True) from None
            raise DecodeFailed(f"schema id {schema_id}: {exc}") from None

    def _spend(self) -> None:
        if not self._budget.spend():
            raise LookupsSpent(f"more than {self.per_second} unseen schema ids in one second; not looked up")


def configure(settings: KafkaSettings, *, check_credentials: bool = True) -> None:
    """Apply `--wire-format` and `--schema-registry` to every codec of this process; the
    registry's credentials checked at once unless `check_credentials` is False."""
    check_wire_format(settings.wire_format, settings.schema_registry)  # as every command's settings do
    if not settings.schema_registry:
        return
    registry = SchemaRegistry(settings.schema_registry)
    lookup = IdLookup(registry)
    for name in CODEC_NAMES:
        codec(name).read_registry_ids(lookup)
    if settings.wire_format == "registry":
        register_all(registry, settings.topics())  # refused credentials fail it, in one line
    elif check_credentials:
        check_registry_credentials(registry)


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
