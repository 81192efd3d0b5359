"""A skops file (a zip) checked to fit in memory before skops reads it.

skops reads each array whole, as many times as its schema names it, and zipfile inflates up to
1 GiB of a deflated entry in one call (bzip2 and lzma ones without any bound), cutting it to the
size the entry declares only after. The sizes a file declares are its writer's word: a 0.4 MB
file of deflated zeros took 0.9 GB to load, a 195 kB one declaring 100 bytes for 200 MB took
449 MB, and an 8 kB schema naming one 8 MB array 40 times 640 MB (reviews). So every entry is
inflated here from its raw bytes, a chunk at a time, and must come to exactly its declared size;
then the arrays the schema names, each time it names one, must fit the bound. An entry that is a
zip itself (a sparse matrix's `.npz`, which scipy inflates with zipfile: 319 kB took 322 MB, with
no trust asked; a review) is checked so too, its entries counted as what reading it costs.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from collections.abc import Iterator
from typing import Any, BinaryIO

from services.core.errors import ModelSpecError

# Every entry of a skops file inflated, at most this many times the file, or INFLATED_FLOOR_BYTES
# if more. skops.io.dump stores its entries (1x) unless told to compress them; deflated, a
# model's arrays shrink a few times.
MAX_INFLATION = 50
INFLATED_FLOOR_BYTES = 256 * 2**20
CHUNK_BYTES = 2**20
_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, ..., name length, extra field length (30 bytes)
# What numpy's np.load (scipy's load_npz) opens as a zip: a local header, or an empty archive's
# end record, behind which zipfile still finds a real archive at the end (a review).
_ZIP = (b"PK\x03\x04", b"PK\x05\x06")


def inflation_bound(model_file: BinaryIO) -> int:
    return max(INFLATED_FLOOR_BYTES, MAX_INFLATION * model_file.seek(0, 2))


def check_entries(archive: zipfile.ZipFile, model_file: BinaryIO, bound: int, where: str,
                  nested: bool = False) -> dict[str, int]:
    """Every entry stored or deflated, inflating to exactly the size it declares, all of them
    within `bound`; `ModelSpecError` otherwise, before more than a chunk of any is held. Returns
    what reading each entry costs: its size, and for one that is a zip, its entries' too."""
    total, costs = 0, {}
    for entry in archive.infolist():
        if entry.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise ModelSpecError(f"{where}: entry {entry.filename[:100]!r} is compressed with method "
                                 f"{entry.compress_type}; only stored or deflated entries are read (other methods "
                                 "inflate without a bound): save it with skops.io.dump's default compression")
        total += entry.file_size
        if total > bound:
            raise _over(where, bound, model_file)
        true_size, head = _inflated(model_file, entry, where)
        if true_size != entry.file_size:
            more = "more than " if true_size > entry.file_size else ""
            raise ModelSpecError(f"{where}: entry {entry.filename[:100]!r} declares {entry.file_size:,} bytes and "
                                 f"inflates to {more}{min(true_size, entry.file_size):,}{'' if more else ' only'}: "
                                 "a damaged or forged file")
        inner = _inner_cost(archive, entry, bound - total, where, nested) if head in _ZIP else 0
        total += inner
        if total > bound:
            raise _over(where, bound, model_file)
        costs[entry.filename] = entry.file_size + inner
    return costs


def _inner_cost(archive: zipfile.ZipFile, entry: zipfile.ZipInfo, bound: int, where: str, nested: bool) -> int:
    """What the entries of an entry that is a zip cost to read."""
    if nested:
        raise ModelSpecError(f"{where}: entry {entry.filename[:100]!r} is a zip inside a zip inside the model's file: "
                             "not read")
    inner = io.BytesIO(archive.read(entry))  # its size checked true, within the bound
    with zipfile.ZipFile(inner) as zipped:
        return sum(check_entries(zipped, inner, bound, f"{where} (in {entry.filename[:100]!r})", nested=True).values())


def check_references(schema: Any, costs: dict[str, int], bound: int, where: str, model_file: BinaryIO) -> None:
    """The entries the schema names (`"file"`), each as many times as skops reads it, within
    `bound`: once per node (a node of an `__id__` seen before is skops' cached one)."""
    total = 0
    for name in _files_named(schema):
        total += costs.get(name, 0)
        if total > bound:
            raise _over(where, bound, model_file, "as the schema names them (one array named again and again)")


def _files_named(schema: Any) -> Iterator[str]:
    """Each file a node names, once per node `__id__` (skops reads a node of an id seen before
    from its cache, whichever it meets first): an id that names two files counts at each, or a
    stand-in naming nothing met first here kept the real node from counting (a review)."""
    seen = set()
    for node in schema_objects(schema):
        named, node_id = node.get("file"), node.get("__id__")
        if isinstance(named, str):
            key = (node_id, named) if isinstance(node_id, int) and node_id else None
            if key is None or key not in seen:
                seen.add(key)
                yield named


def schema_objects(schema: Any) -> Iterator[dict[str, Any]]:
    """Every JSON object of a skops schema, however deeply nested (pipelines, ensembles)."""
    pending = [schema]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            yield node
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)


def _over(where: str, bound: int, model_file: BinaryIO, how: str = "") -> ModelSpecError:
    stored = model_file.seek(0, 2)
    return ModelSpecError(f"{where}: its entries inflate to more than {bound:,} bytes {how + ' ' if how else ''}"
                          f"from a {stored:,}-byte file ({MAX_INFLATION} times, or {INFLATED_FLOOR_BYTES:,} bytes if "
                          "more): not loaded, as a zip bomb would take that much memory")


def _inflated(model_file: BinaryIO, entry: zipfile.ZipInfo, where: str) -> tuple[int, bytes]:
    """How many bytes the entry's raw data inflates to, counted a chunk at a time, at most one
    byte past what it declares; and its first 4 (a zip's signature, if it is one)."""
    model_file.seek(entry.header_offset)
    header = model_file.read(_LOCAL_HEADER.size)
    if len(header) != _LOCAL_HEADER.size or header[:4] != b"PK\x03\x04":
        raise ModelSpecError(f"{where}: entry {entry.filename[:100]!r} has no local header: a damaged file")
    _signature, name_length, extra_length = _LOCAL_HEADER.unpack(header)
    model_file.seek(entry.header_offset + _LOCAL_HEADER.size + name_length + extra_length)
    if entry.compress_type == zipfile.ZIP_STORED:
        return entry.compress_size, model_file.read(min(4, entry.compress_size))
    inflater, produced, left, head = zlib.decompressobj(-zlib.MAX_WBITS), 0, entry.compress_size, b""
    while left > 0 and not inflater.eof:
        raw = model_file.read(min(CHUNK_BYTES, left))
        if not raw:
            raise ModelSpecError(f"{where}: entry {entry.filename[:100]!r} ends before its data: a damaged file")
        left -= len(raw)
        pending = raw
        while not inflater.eof:  # a chunk of output at a time, until this input is used and its output out
            try:
                out = inflater.decompress(pending, CHUNK_BYTES)
            except zlib.error as err:
                raise ModelSpecError(f"{where}: entry {entry.filename[:100]!r} cannot be inflated ({err})") from None
            produced += len(out)
            head += out[:4 - len(head)]
            if produced > entry.file_size:
                return produced, head
            pending = inflater.unconsumed_tail
            if not pending and not out:
                break
    if not inflater.eof:
        raise ModelSpecError(f"{where}: entry {entry.filename[:100]!r} ends before its deflated data: a damaged file")
    return produced, head
