"""CloudEvents binary-mode headers (Kafka protocol binding, spec 1.0) for records we write.

The record value stays the Avro record; the event's attributes go into `ce_*` headers, so
tools that speak CloudEvents (Knative, Dapr, Event Grid bridges, ...) read our topics as
events without a custom decoder. `ce_id` is the request id: with `ce_source` (the topic) it
names one event, and an answer repeated after a crash carries the same id, as the spec wants
for a duplicate of one event.
"""

from __future__ import annotations

Headers = list[tuple[str, bytes]]

SPEC_VERSION = b"1.0"
CONTENT_TYPE = b"application/avro"
TYPE_PREFIX = "io.rendezvous."


class EventHeaders:
    """The headers of one kind of event written to one topic; `for_id` adds the event's id."""

    def __init__(self, record_name: str, topic: str):
        self._fixed: Headers = [
            ("ce_specversion", SPEC_VERSION),
            ("ce_type", (TYPE_PREFIX + record_name).encode()),
            ("ce_source", f"/rendezvous/{topic}".encode()),
            ("content-type", CONTENT_TYPE),
        ]

    def for_id(self, event_id: str) -> Headers:
        return [("ce_id", event_id.encode()), *self._fixed]
