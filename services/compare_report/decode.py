"""Decoding batches of Comparison values into columns, the fast way when possible.

Three tiers, each the fallback of the one before:
1. `compiled_decode`: records with the current schema's header, decoded by a compiled loop
   straight into columns (several times less CPU than tier 2 in bench/compare_read.py: no dict
   per record);
2. one fastavro reader over the batch's bodies end to end, every record's end checked against
   its value's length (decoded as one array, two damaged records could frame each other into
   two valid ones); used for small ranges, when the schema has changed under the compiled
   decoder, or it rejected the batch;
3. `Codec.decode` per record: older writer schemas (schema resolution), and every record of a
   batch that tier 2 could not decode exactly, so a bad record is counted and skipped, never
   fatal, never misread silently.

Tier 1 is used only for ranges of at least `COMPILED_FROM` records: loading the compiled code
(numba and its cache) costs a process ~0.5 s, which tier 2 (~13 µs a record more, `Columns.add`
included) makes up only from some 25,000 records: a report of a few thousand would take twice as long.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from io import BytesIO
from typing import TYPE_CHECKING, Any

from fastavro import parse_schema, schemaless_reader

from services.compare_report.columns import Columns
from services.core.codec import Codec, strip_logical_types
from services.core.comparison_columns import split_current
from services.core.errors import BadInput
from services.core.id_lookup import decoded_when_readable

if TYPE_CHECKING:
    from services.core.compiled_decode import CurrentBatches

log = logging.getLogger(__name__)

# Records in a range from which the compiled decoder pays for its load: `rendezvous compare --since 1h`
# took 0.59 / 1.12 s for 5,000 records (fastavro / compiled), about the same for 30,000 (1.13 / 1.24).
COMPILED_FROM = 25_000


class BatchDecoder:
    """Decodes lists of single-object encoded values of one codec; counts what it must skip.
    `expected`: how many records the caller will hand over in all (None: unknown, many)."""

    def __init__(self, codec: Codec, expected: int | None = None):
        self._codec = codec
        self._header = codec.header
        self._record = parse_schema(strip_logical_types(codec.schema), _write_hint=False)
        self._batches = _compiled(codec) if expected is None or expected >= COMPILED_FROM else None
        self.skipped = 0

    def decode_into(self, values: Sequence[bytes | None], columns: Columns) -> None:
        """Append every decodable record of `values` to `columns`."""
        current, others = split_current(values, self._header)
        if current and self._batches is not None and (batch := self._batches.decode(current)) is not None:
            columns.add_batch(batch)
            current = []
        columns.add(self._decode_current(current))
        if others:
            columns.add(self._one_by_one(others))

    def decode(self, values: Sequence[bytes | None]) -> list[dict[str, Any]]:
        """Every decodable record of `values` as dicts (tiers 2 and 3), current-header ones first."""
        current, others = split_current(values, self._header)
        records = self._decode_current(current)
        if others:
            records.extend(self._one_by_one(others))
        return records

    def _decode_current(self, values: list[bytes]) -> list[dict[str, Any]]:
        if not values:
            return []
        skip = len(self._header)
        body = BytesIO(b"".join([v[skip:] for v in values]))
        records: list[dict[str, Any]] = []
        end = 0
        try:
            for value in values:
                record = schemaless_reader(body, self._record, None)
                if not isinstance(record, dict):
                    return self._one_by_one(values)
                records.append(record)
                # Each record must end where its value does: read as one stream, a record lacking
                # its last byte and the next with one byte too many would both pass.
                end += len(value) - skip
                if body.tell() != end:
                    return self._one_by_one(values)
        # A corrupt body may raise many types inside fastavro; the batch is then redone record by
        # record below, which names and skips exactly the bad ones.
        except Exception:  # noqa: BLE001
            return self._one_by_one(values)
        return records

    def _one_by_one(self, values: Sequence[bytes | None]) -> list[dict[str, Any]]:
        records = []
        for value in values:
            if value is None:  # no comparison record (control records are left out before): the live one refuses it
                self.skipped += 1
                continue
            try:  # waited for while the registry cannot be read yet: never counted as skipped
                records.append(decoded_when_readable(self._codec.decode, value))
            except BadInput:
                self.skipped += 1
        return records


def _compiled(codec: Codec) -> CurrentBatches | None:
    """The compiled decoder, loaded (imported here: numba's import alone is ~0.3 s); None when the
    schema changed under it."""
    from services.core.compiled_decode import CurrentBatches, warm_up

    batches = CurrentBatches(codec)
    if not batches.usable:
        log.warning("%s schema changed: the report decodes with fastavro (slower)", codec.name)
        return None
    warm_up()
    return batches
