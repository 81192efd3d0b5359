"""Avro encoding of the records in `schemas/*.avsc`, in either of two framings.

Single-object encoding (Avro spec; the default, needs nothing but the schema files):

    C3 01 | 8-byte little-endian CRC-64-AVRO fingerprint of the writer schema's
            Parsing Canonical Form | Avro binary body

Schema-registry framing (Confluent's wire format, read by Connect, ksqlDB, Flink, ...):

    00 | 4-byte big-endian schema id in a schema registry | Avro binary body

A reader accepts both on every topic. It resolves the fingerprint, or the schema the registry
holds under the id, to a writer schema it knows (the current one, or an older version kept in
`schemas/history/<name>/`) and applies Avro schema resolution, so schemas evolve by adding
defaulted fields without breaking older consumers. What a process *writes* is set once at
start-up (`services/core/wire.py`).

Hot path notes: each schema is parsed once; `timestamp-millis` logical types are stripped
before parsing so times stay plain ints (epoch ms) instead of becoming `datetime` objects
on every decode. Stripping does not change the fingerprint, because the Parsing Canonical
Form drops `logicalType` anyway. Records of plain values are written by an encoder compiled
once per schema (`avro_writer.py`, about half of fastavro's time); fastavro writes the others.
"""

from __future__ import annotations

import copy
import json
import math
import os
import struct
import time
from collections.abc import Callable, Iterable, Mapping
from functools import cache
from io import BytesIO
from pathlib import Path
from typing import Any

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import to_parsing_canonical_form

from services.core.avro_writer import Unfit, compile_encoder
from services.core.errors import BadInput, ConfigError, DecodeFailed, LookupsSpent, UnknownFingerprint
from services.core.rate_limit import PerSecond

MAGIC = b"\xc3\x01"
HEADER_SIZE = len(MAGIC) + 8
REGISTRY_MAGIC = 0
REGISTRY_HEADER_SIZE = 5
MAX_SCHEMA_ID = 2**31 - 1  # registries number schemas with Java ints

# Given a registry schema id, the writer schema it names, or `BadInput`: `retriable` when the
# failure is passing (the registry is down), else the id is refused (for a while if `not_found`).
SchemaForId = Callable[[int], Mapping[str, Any]]
_MAX_REFUSED_IDS = 10_000
# How long the registry's "no such schema" for an id is taken for its answer: a replica that has
# not caught up with a schema registered a moment earlier says so too, and remembered for good it
# dead-lettered every later record of that id until a restart (a review). Every other verdict (an
# id no registry gives, a schema that is none of ours or no Avro) stays.
NOT_FOUND_FOR_S = 60.0
REASKS_PER_S = 2
_MAX_KNOWN_IDS = 10_000  # ids resolved to a version we read (see _schemas_for_id)

_CRC64_EMPTY = 0xC15D213AA4D7A795


def _crc64_table() -> list[int]:
    table = []
    for byte in range(256):
        fp = byte
        for _ in range(8):
            fp = (fp >> 1) ^ (_CRC64_EMPTY & -(fp & 1))
        table.append(fp)
    return table


_CRC64_TABLE = _crc64_table()


def crc64_avro(data: bytes) -> int:
    """The Rabin CRC-64 the Avro spec defines for schema fingerprints."""
    fp = _CRC64_EMPTY
    for byte in data:
        fp = (fp >> 8) ^ _CRC64_TABLE[(fp ^ byte) & 0xFF]
    return fp


def fingerprint(schema: Mapping[str, Any]) -> bytes:
    """8-byte little-endian CRC-64-AVRO fingerprint of the schema's canonical form."""
    canonical = to_parsing_canonical_form(parse_schema(dict(schema), _write_hint=False))
    return struct.pack("<Q", crc64_avro(canonical.encode("utf-8")))


def strip_logical_types(node: Any) -> Any:
    """The schema without `logicalType` annotations: times stay epoch-ms ints, not datetimes."""
    if isinstance(node, dict):
        return {k: strip_logical_types(v) for k, v in node.items() if k != "logicalType"}
    if isinstance(node, list):
        return [strip_logical_types(v) for v in node]
    return node


def parse_plain(schema: Mapping[str, Any]) -> Any:
    """Parse a schema with logical types stripped, so times decode as plain epoch-ms ints."""
    # The default write hint marks the result as parsed, so fastavro does not parse it again on
    # every read and write (with _write_hint=False it would, doubling the cost of a decode).
    return parse_schema(strip_logical_types(copy.deepcopy(dict(schema))))


class Codec:
    """Encode and decode one record type; knows every writer version it may meet."""

    def __init__(self, schema: Mapping[str, Any], older_writers: Iterable[Mapping[str, Any]] = ()):
        self.name: str = schema["name"]
        self.full_name: str = f"{schema['namespace']}.{self.name}" if schema.get("namespace") else self.name
        self.schema = dict(schema)
        self.fingerprint = fingerprint(schema)
        # What `encode` writes before the body: the single-object header until `write_registry_id`.
        self.header = self._single_header = MAGIC + self.fingerprint
        self._parsed = parse_plain(schema)
        self._compiled = compile_encoder(schema)
        # fingerprint -> (writer schema, reader schema or None when no resolution is needed)
        self._readers: dict[bytes, tuple[Any, Any]] = {self.fingerprint: (self._parsed, None)}
        for writer in older_writers:
            self._readers[fingerprint(writer)] = (parse_plain(writer), self._parsed)
        self._by_id: dict[int, tuple[Any, Any]] = {}
        # ids that name no version we know, and why (kept as kind + text: a raised exception object
        # would grow its traceback each time it is raised again)
        self._refused_ids: dict[int, tuple[type[BadInput], str, float]] = {}  # (kind, why, until: monotonic)
        self._reasks = PerSecond(REASKS_PER_S)
        self._lookup: SchemaForId | None = None

    def current_body(self, data: bytes | None) -> int:
        """Where the body of `data` starts when it is framed with the current schema: its
        single-object header, or a registry id found to name it (`unresolved` looks ids up before
        a service's handler reads them); 0 for anything else."""
        if data is None:
            return 0
        if data.startswith(self._single_header):
            return HEADER_SIZE
        schema_id = registry_id(data)
        if schema_id is not None:
            known = self._by_id.get(schema_id)
            if known is not None and known[0] is self._parsed and known[1] is None:
                return REGISTRY_HEADER_SIZE
        return 0

    def read_registry_ids(self, lookup: SchemaForId) -> None:
        """Resolve schema ids of registry-framed records with `lookup` (once per id)."""
        self._lookup = lookup

    @property
    def looks_up_ids(self) -> bool:
        """Whether registry-framed records' ids are looked up (`read_registry_ids`)."""
        return self._lookup is not None

    def unresolved(self, data: bytes | None) -> str | None:
        """For a registry-framed record whose schema id is new here: look it up now, and say why
        when that must be tried again later (the registry is down or refuses for now: schema_wait.py).
        None when its schema is known, found, refused for good, or not looked up for the lookups
        of the second are spent (`decode` says why), and for every other record."""
        schema_id = registry_id(data) if self._lookup is not None else None
        if schema_id is None or schema_id in self._by_id:
            return None
        try:
            self._schemas_for_id(schema_id)
        except LookupsSpent:
            return None  # decoded now, it is dead-lettered with the reason (errors.py says why)
        except BadInput as failure:
            return failure.message if failure.retriable else None
        return None

    @property
    def registry_id(self) -> int | None:
        """The schema id `encode` frames records with (`write_registry_id`), None when single-object."""
        return int.from_bytes(self.header[1:5], "big") if self.header[0] == REGISTRY_MAGIC else None

    def write_registry_id(self, schema_id: int) -> None:
        """Frame what `encode` writes the registry way, with the id the registry gave the schema."""
        if not 0 <= schema_id < 2**32:
            raise ConfigError(f"schema id {schema_id} of {self.name} does not fit the 4-byte id field")
        self.header = bytes([REGISTRY_MAGIC]) + schema_id.to_bytes(4, "big")
        self._by_id[schema_id] = (self._parsed, None)

    def encode(self, record: Mapping[str, Any]) -> bytes:
        if self._compiled is not None:
            try:
                return self.header + self._compiled(record)
            except Unfit:
                pass  # not only plain values (avro_writer.py): fastavro writes it, or says why not
        buf = BytesIO()
        buf.write(self.header)
        schemaless_writer(buf, self._parsed, record)
        return buf.getvalue()

    def decode(self, data: bytes | None) -> dict[str, Any]:
        """Decode one record in either framing; raise `BadInput` subclasses on any fault."""
        if data is not None and len(data) >= HEADER_SIZE and data[:2] == MAGIC:
            schemas = self._readers.get(data[2:HEADER_SIZE])
            if schemas is None:
                raise UnknownFingerprint(
                    f"unknown writer schema fingerprint {data[2:HEADER_SIZE].hex()} for {self.name}"
                )
            return self._body(data, HEADER_SIZE, schemas)
        schema_id = registry_id(data)
        if schema_id is not None and data is not None:
            return self._body(data, REGISTRY_HEADER_SIZE, self._schemas_for_id(schema_id))
        raise DecodeFailed(
            f"not an Avro {self.name}: neither single-object (C3 01) nor schema-registry (00 + id) framed"
        )

    def _schemas_for_id(self, schema_id: int) -> tuple[Any, Any]:
        known = self._by_id.get(schema_id)
        if known is not None:
            return known
        if self._lookup is None:
            raise DecodeFailed(
                f"{self.name} framed with schema-registry id {schema_id}, but no --schema-registry is configured"
            )
        refused = self._refused_ids.get(schema_id)
        # Asked again once its "not found" is old, at most REASKS_PER_S a second: re-asked out of
        # the lookups of the second, 20 ids refused a minute before spent them all, and a valid
        # new id meeting them was dead-lettered, not looked up (a review).
        if refused is not None and (time.monotonic() < refused[2] or not self._reasks.spend()):
            raise refused[0](refused[1])
        if schema_id > MAX_SCHEMA_ID:
            # No registry gives such an id (Confluent's and Apicurio's are Java ints): not asked.
            # Asked, a registry answering it with a 404 of its own web framework (not its "not found")
            # marked the registry away for 5 s, and every record type's new ids waited (a review).
            raise self._refuse(schema_id, UnknownFingerprint(
                f"schema id {schema_id} is beyond any registry's ids (at most {MAX_SCHEMA_ID}): not looked up"))
        try:
            writer = self._lookup(schema_id)
        except BadInput as failure:
            if failure.retriable:
                # A re-ask the registry could not answer now: the old verdict is out of date, the id
                # is as unseen (its records wait for the registry), not refused on what it said then.
                self._refused_ids.pop(schema_id, None)
                raise failure from None
            # The registry's own "not found" for a while (NOT_FOUND_FOR_S); a schema nobody reads for good.
            for_s = NOT_FOUND_FOR_S if getattr(failure, "not_found", False) else math.inf
            raise self._refuse(schema_id, failure, for_s) from None
        try:
            writer_fingerprint = fingerprint(writer)
        except Exception as exc:  # noqa: BLE001 (fastavro's parse errors have many types)
            why = DecodeFailed(f"schema id {schema_id} is not a valid Avro schema: {exc}")
            raise self._refuse(schema_id, why) from None
        schemas = self._readers.get(writer_fingerprint)
        if schemas is None:
            unknown = UnknownFingerprint(f"schema id {schema_id} is not a known version of {self.name}")
            raise self._refuse(schema_id, unknown)
        if len(self._by_id) >= _MAX_KNOWN_IDS:
            # A registry answering every made-up id with one of our schemas grew this for good (a
            # review); real deployments have a few ids per record type. Our own id is set again.
            own = self.registry_id
            self._by_id = {own: self._by_id[own]} if own is not None and own in self._by_id else {}
        self._by_id[schema_id] = schemas
        return schemas

    def _refuse(self, schema_id: int, why: BadInput, for_s: float = math.inf) -> BadInput:
        """Remember that `schema_id` names no schema we can read, so it is not looked up again
        (for `for_s`: then it is)."""
        if len(self._refused_ids) >= _MAX_REFUSED_IDS:
            self._refused_ids.clear()
        self._refused_ids[schema_id] = (type(why), why.message, time.monotonic() + for_s)
        return why

    def _body(self, data: bytes, start: int, schemas: tuple[Any, Any]) -> dict[str, Any]:
        body = BytesIO(data)
        body.seek(start)
        try:
            record = schemaless_reader(body, schemas[0], schemas[1])
        # fastavro signals corrupt input with many exception types (EOFError, UnicodeDecodeError,
        # IndexError, ValueError, ...); each is one bad record, never a reason to stop the service.
        except Exception as exc:  # noqa: BLE001
            raise DecodeFailed(f"corrupt {self.name} body: {type(exc).__name__}: {exc}") from None
        if body.tell() != len(data):
            raise DecodeFailed(f"{len(data) - body.tell()} trailing bytes after a {self.name} record")
        if not isinstance(record, dict):
            raise DecodeFailed(f"{self.name} body is not a record")
        return record


def registry_id(data: bytes | None) -> int | None:
    """The schema id of a record in the schema registry's framing (None: another framing)."""
    if data is None or len(data) < REGISTRY_HEADER_SIZE or data[0] != REGISTRY_MAGIC:
        return None
    return int.from_bytes(data[1:REGISTRY_HEADER_SIZE], "big")


def schemas_dir() -> Path:
    """`RDV_SCHEMA_DIR`, else the schemas shipped in this package (`schemas/` at the repository
    root is a link to the same directory: the public contract has one source)."""
    configured = os.environ.get("RDV_SCHEMA_DIR")
    path = Path(configured) if configured else Path(__file__).resolve().parent / "schemas"
    if not (path / "request.avsc").is_file():
        raise ConfigError(f"schema directory {path} has no request.avsc; set RDV_SCHEMA_DIR")
    return path


def load_schema(file: Path) -> dict[str, Any]:
    try:
        schema: dict[str, Any] = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read schema {file}: {exc}") from None
    return schema


CODEC_NAMES = ("request", "score", "answer", "comparison", "deadletter", "schedule", "model_info")


@cache
def codec(name: str) -> Codec:
    """The shared codec for `request`, `score`, `answer`, `comparison` or `deadletter`."""
    base = schemas_dir()
    current = load_schema(base / f"{name}.avsc")
    history = sorted((base / "history" / name).glob("*.avsc"))
    return Codec(current, [load_schema(p) for p in history])
