"""Control records: records with no value and a header that says what they are for.

The rendezvous writes two kinds to its own topics; they carry no Avro body, so every reader
of those topics skips them before decoding (an outside reader sees a record with a null value,
which Kafka readers already treat as "no record here"):

- `rdv-clock` on rdv.scores: moves the log's clock on a quiet partition (rendezvous/clock.py).
  Its header's value says when the writer asked for it (`clock.BrokerLead`); readers need not.
- `rdv-seal` on rdv.answers / rdv.log: ends a transaction the broker left hanging across a
  restart (rendezvous/takeover.py, docs/failover.md). Written inside one of the rendezvous' own
  transactions: its commit marker ends every record its producer left open on that partition.
"""

from __future__ import annotations

from confluent_kafka import Message

CLOCK_HEADER = "rdv-clock"
SEAL_HEADER = "rdv-seal"
CONTROL_HEADERS = (CLOCK_HEADER, SEAL_HEADER)


def control_header(msg: Message) -> tuple[str, bytes | None] | None:
    """The control header of a control record, `CLOCK_HEADER` or `SEAL_HEADER`, and its value
    (None unless bytes), in one look at the headers; None for data."""
    if msg.value() is not None:
        return None
    headers = msg.headers()
    if not isinstance(headers, list):
        return None
    return next(((name, value if isinstance(value, bytes) else None) for name, value in headers
                 if name in CONTROL_HEADERS), None)


def is_control_record(msg: Message) -> bool:
    return control_header(msg) is not None
