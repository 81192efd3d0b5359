"""One exception tree for every service.

    RendezvousError                  root; carries optional Kafka context and `retriable`
    ├── ConfigError                  bad flag / env / spec: the service refuses to start
    │   └── ModelSpecError           a model spec that cannot be resolved or loaded
    ├── BrokerError                  the broker cannot be reached or refused us
    │   ├── BrokerUnavailable        no answer to a metadata request (retriable)
    │   └── TopicMissing             a topic the service needs does not exist
    │       └── TopicRefused         ... to the principal: it may not describe it (its grant is missing)
    ├── KafkaOperationError          a produce / consume / commit failed (wraps KafkaError)
    │   ├── DeliveryFailed           the broker did not take a produced record
    │   └── ConsumerFenced           another member took our group.instance.id: the client is done
    └── BadInput                     one record that cannot be used (dead-letter it, go on)
        ├── UnknownFingerprint       the header (fingerprint or registry id) names a schema we do not know
        ├── DecodeFailed             bytes that are not a valid record of the schema
        │   └── LookupsSpent         a schema id not looked up: this second's lookups are spent
        └── UnexpectedFailure        handling this one record raised unexpectedly (a bug or an
                                     input nobody foresaw): dead-lettered, the service goes on

Services catch `BadInput` per record (dead-letter + count) and let everything else end
the service with one clear line (the CLI prints `str(err)`, not a traceback).

Apart from the tree, `Stopped` (a KeyboardInterrupt) is a command's SIGTERM or SIGHUP raised
where it is, as Ctrl-C is (services/cli/main.py): whatever catches a model's errors lets it go.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass


@dataclass(frozen=True)
class Source:
    """Where a record came from, attached to errors and dead letters."""

    topic: str
    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


class RendezvousError(Exception):
    """Root of every error this project raises on purpose."""

    retriable: bool = False

    def __init__(self, message: str, *, source: Source | None = None, retriable: bool | None = None):
        super().__init__(message)
        self.message = message
        self.source = source
        if retriable is not None:
            self.retriable = retriable

    def __str__(self) -> str:
        return f"{self.message} (at {self.source})" if self.source else self.message


class ConfigError(RendezvousError):
    """A setting, flag or file the service cannot start with."""


class ModelSpecError(ConfigError):
    """A model spec (`demo:x`, `module:factory`, `*.joblib`, `*.onnx`) that cannot be loaded."""


class BrokerError(RendezvousError):
    """The Kafka cluster is unreachable or refused an administrative request."""


class BrokerUnavailable(BrokerError):
    """No broker answered a metadata request in time."""

    retriable = True


class StoppedStarting(RendezvousError):
    """Asked to stop (SIGTERM, Ctrl-C) before the service started: not a failure (see run_service)."""


class StoppedWaiting(StoppedStarting, BrokerError):
    """Asked to stop while waiting for a broker."""


class TopicMissing(BrokerError):
    """A topic the service needs does not exist (create it with `rendezvous topics create`)."""


class TopicRefused(TopicMissing):
    """A topic the principal may not describe: missing to it, whether it exists or not (a broker
    says no more to a principal it refuses); the error names the permission, not `topics create`."""


class KafkaOperationError(RendezvousError):
    """A produce, consume or commit call failed; `retriable` mirrors librdkafka's verdict."""


class ProducerInErrorState(KafkaOperationError):
    """The producer takes no record now, whichever it is: its transaction must be aborted, or it
    failed for good (librdkafka's _STATE, an abortable or a fatal error). Not the record's fault."""


class RecordTooLarge(KafkaOperationError):
    """The client refused a record over its `message.max.bytes` (nothing was sent)."""


class DeliveryFailed(KafkaOperationError):
    """A produced record was not acknowledged by the broker."""


class RefusedForGood(DeliveryFailed):
    """The broker refuses the record and would refuse it again (too large for the topic, a missing
    permission): redoing the work that made it cannot help."""


class TopicGone(RefusedForGood):
    """An output topic (or its partition) that no longer exists, deleted while the service ran:
    every record to it would be refused, so the service stops, as it refuses to start without it."""


class OutputsLost(DeliveryFailed):
    """Records the producer gave up on (timed out, refused): the work that made them must be
    redone from the last committed offsets; nothing retries them."""


class ConsumerFenced(KafkaOperationError):
    """A static member fenced by another with the same group.instance.id (or by its own rejoin
    after a broker restart): a fatal error for that client, which must be replaced."""


class BadInput(RendezvousError):
    """One record that cannot be used; it is dead-lettered with this reason."""


class UnknownFingerprint(BadInput):
    """The record's header (fingerprint or registry id) names a writer schema this service does not know."""


class DecodeFailed(BadInput):
    """The bytes are not a valid framed Avro record. `not_found`: the registry said it has no
    schema of the record's id (the codec asks again after a while: codec.py NOT_FOUND_FOR_S)."""

    not_found: bool = False


class LookupsSpent(DecodeFailed):
    """A record's schema-registry id was not looked up: this process has spent its lookups of the
    second for records of its type (wire.py: a flood on one topic spends no other type's). Not
    the id's fault, so it is not refused for good; nor does the record wait for the next second,
    as it does while the registry is down (schema_wait.py): a flood of made-up ids would hold its
    partition to that many records a second."""

    retriable = True


class UnexpectedFailure(BadInput):
    """Handling one record raised something no check foresaw; the record is dead-lettered."""


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the command is, as Ctrl-C is."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def interrupted_status(stopped: KeyboardInterrupt) -> int:
    """A command's exit status once a signal stopped it: 128 + the signal's number, as a shell's."""
    return 128 + (stopped.signum if isinstance(stopped, Stopped) else signal.SIGINT)
