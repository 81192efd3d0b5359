"""Avro binary encoding by encoders compiled once per schema: the codec's fast path for writing.

Why: fastavro's writer walks the schema for every record; writing a Comparison record (3 model
outputs) took ≈ 27 µs, an Answer ≈ 11 µs, on every request the rendezvous answers. Here the
schema is turned once into encoders: a record's is one function generated from it (its fields
written inline), arrays, maps and other types are closures, so a record costs only its values.

Only plain values take this path: exactly `str`, `int`, `float`, `bool`, `bytes`, `None`,
`list` and `dict` where the schema asks for them, every record field present, longs and ints in
range. Anything else (a numpy float, an int where a double is due, a missing field that has a
default, text that is not UTF-8, ...) raises `Unfit`, and the codec writes that record with
fastavro, which accepts it or refuses it exactly as before. A schema with a construct not covered
here (fixed, float, a union other than null + one type, a recursive type) gets no compiled
encoder at all. Either way the bytes are fastavro's: tests/unit/test_avro_writer.py compares them
on generated records of every schema.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["Encoder", "Unfit", "compile_encoder", "long_bytes", "string_bytes"]

Encoder = Callable[[Any], bytes]

_NULL = b"\x00"
_SOME = b"\x02"  # union branch 1 of [null, T], zig-zag encoded
_EMPTY_BLOCK = b"\x00"  # an array or map with no (more) items
_SMALL = tuple(bytes((n,)) for n in range(0x80))
_DOUBLE = struct.Struct("<d").pack
STRINGS_KEPT = 1024  # per place in a schema (see _repeated_strings)
KEPT_CHARS = 256  # longer strings are not kept: a name's, a label's bytes repeat; a megabyte's need not
_LONG_MIN, _LONG_MAX = -(1 << 63), (1 << 63) - 1
_INT_MIN, _INT_MAX = -(1 << 31), (1 << 31) - 1


class Unfit(Exception):
    """A value this encoder does not write itself: the codec hands the record to fastavro."""


class Unsupported(Exception):
    """A schema construct this module does not compile."""


def _varint(n: int) -> bytes:
    """Unsigned variable-length integer, 7 bits per byte, low bits first."""
    if n < 0x80:
        return _SMALL[n]
    if n < 0x4000:
        return bytes(((n & 0x7F) | 0x80, n >> 7))
    # Timestamps (epoch ms, three per record the rendezvous writes) share their bits above the
    # lowest 14 for seconds at a time: those bytes are kept, the two lowest written each time.
    high = n >> 14
    rest = _HIGH_GROUPS.get(high)
    if rest is None:
        rest = _varint_loop(high)
        if len(_HIGH_GROUPS) >= HIGH_GROUPS_KEPT:
            _HIGH_GROUPS.clear()  # full (after ~9 hours of timestamps, or other large longs): start over
        _HIGH_GROUPS[high] = rest
    return bytes(((n & 0x7F) | 0x80, ((n >> 7) & 0x7F) | 0x80)) + rest


HIGH_GROUPS_KEPT = 4096
_HIGH_GROUPS: dict[int, bytes] = {}


def _varint_loop(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def long_bytes(n: int) -> bytes:
    """Avro long (or int): zig-zag, then a varint. `n` must fit 64 bits."""
    return _varint((n << 1) ^ (n >> 63))


def string_bytes(text: str) -> bytes:
    """Avro string: its UTF-8 length, then the bytes (UnicodeEncodeError for lone surrogates)."""
    data = text.encode("utf-8")
    return _varint(len(data) << 1) + data


def _long(value: Any) -> bytes:
    if type(value) is not int or not _LONG_MIN <= value <= _LONG_MAX:
        raise Unfit
    return _varint((value << 1) ^ (value >> 63))


def _int(value: Any) -> bytes:
    if type(value) is not int or not _INT_MIN <= value <= _INT_MAX:
        raise Unfit
    return _varint((value << 1) ^ (value >> 63))


def _double(value: Any) -> bytes:
    if type(value) is not float:
        raise Unfit
    return _DOUBLE(value)


def _boolean(value: Any) -> bytes:
    if value is True:
        return b"\x01"
    if value is False:
        return b"\x00"
    raise Unfit


def _string(value: Any) -> bytes:
    if type(value) is not str:
        raise Unfit
    try:
        data = value.encode("utf-8")
    except UnicodeEncodeError:
        raise Unfit from None
    return _varint(len(data) << 1) + data


def _repeated_strings() -> Encoder:
    """A string encoder for one place in a schema, keeping the bytes of the first values it
    meets: model names, versions, labels, reasons and feature names repeat from record to record
    (encoding one costs ≈ 0.5 µs, a lookup ≈ 0.05). Places of unique values (request ids) fill
    their cache once and then only miss."""
    known: dict[str, bytes] = {}

    def string(value: Any) -> bytes:
        encoded = known.get(value) if type(value) is str else None
        return _new_string(known, value) if encoded is None else encoded

    return string


def _bytes(value: Any) -> bytes:
    if type(value) is not bytes:
        raise Unfit
    return _varint(len(value) << 1) + value


_PRIMITIVES: dict[str, Encoder] = {"long": _long, "int": _int, "double": _double, "boolean": _boolean, "bytes": _bytes}


def compile_encoder(schema: Mapping[str, Any]) -> Encoder | None:
    """An encoder of Avro bodies (no header) for `schema`, or None if it uses a construct not
    compiled here (the codec then always uses fastavro)."""
    try:
        return _Compiler(schema.get("namespace", "")).node(dict(schema))
    except Unsupported:
        return None


class _Compiler:
    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.named: dict[str, Encoder | None] = {}  # full name -> encoder (None while compiling: recursion)

    def node(self, node: Any) -> Encoder:
        if isinstance(node, str):
            return self._reference(node)
        if isinstance(node, list):
            return self._union(node)
        if not isinstance(node, Mapping):
            raise Unsupported(repr(node))
        kind = node.get("type")
        if kind == "record":
            return self._named(node, self._record)
        if kind == "enum":
            return self._named(node, self._enum)
        if kind == "array":
            return _array(self.node(node["items"]))
        if kind == "map":
            return _map(self.node(node["values"]))
        return self.node(kind)  # {"type": "long", "logicalType": ...}: the codec writes plain values

    def _reference(self, name: str) -> Encoder:
        if name == "string":
            return _repeated_strings()
        if name in _PRIMITIVES:
            return _PRIMITIVES[name]
        full = name if "." in name else f"{self.namespace}.{name}" if self.namespace else name
        encoder = self.named.get(full, self.named.get(name))
        if encoder is None:
            raise Unsupported(f"type {name!r} (unknown here, or recursive)")
        return encoder

    def _named(self, node: Mapping[str, Any], build: Callable[[Mapping[str, Any]], Encoder]) -> Encoder:
        namespace = node.get("namespace", self.namespace)
        full = node["name"] if "." in node["name"] or not namespace else f"{namespace}.{node['name']}"
        self.named[full] = None
        outer, self.namespace = self.namespace, namespace
        try:
            encoder = build(node)
        finally:
            self.namespace = outer
        self.named[full] = encoder
        return encoder

    def _record(self, node: Mapping[str, Any]) -> Encoder:
        return _RecordSource(self, node).compile()
    def _enum(self, node: Mapping[str, Any]) -> Encoder:
        indexes = {symbol: _varint(i << 1) for i, symbol in enumerate(node["symbols"])}

        def enum(value: Any) -> bytes:
            encoded = indexes.get(value) if type(value) is str else None
            if encoded is None:
                raise Unfit
            return encoded

        return enum

    def _union(self, branches: list[Any]) -> Encoder:
        if len(branches) != 2 or "null" not in branches or branches[0] == branches[1]:
            raise Unsupported(f"union {branches!r}")
        null_first = branches[0] == "null"
        inner = self.node(branches[1] if null_first else branches[0])
        # The branch index written before the value: null is branch 0 or 1.
        null_tag, value_tag = (_NULL, _SOME) if null_first else (_SOME, _NULL)

        def optional(value: Any) -> bytes:
            return null_tag if value is None else value_tag + inner(value)

        return optional


class _RecordSource:
    """One record's encoder as Python source, compiled once: each field's checks and bytes written
    inline, so a record costs one call instead of one (or, through a union, two or three) per
    field: the rendezvous' Answer and Comparison records took ≈ 30% less time (docs/benchmarks.md).
    Arrays, maps and nested records are called as encoders of their own."""

    _LONG = "if type({x}) is not int or not {lo} <= {x} <= {hi}: raise Unfit"

    def __init__(self, compiler: _Compiler, node: Mapping[str, Any]) -> None:
        self.compiler = compiler
        self.fields = [(f["name"], f["type"]) for f in node["fields"]]
        self.env: dict[str, Any] = {"Unfit": Unfit, "_SMALL": _SMALL, "_varint": _varint, "_DOUBLE": _DOUBLE,
                                    "_new_string": _new_string}
        self.lines: list[str] = []

    def compile(self) -> Encoder:
        names = [f"v{i}" for i in range(len(self.fields))]
        head = ["def record(value):", "    if type(value) is not dict: raise Unfit", "    try:"]
        head += [f"        {var} = value[{name!r}]" for var, (name, _) in zip(names, self.fields, strict=True)]
        # A missing field: fastavro applies its default, or refuses.
        head += ["    except KeyError: raise Unfit from None", "    out = []", "    a = out.append"]
        for var, (_, kind) in zip(names, self.fields, strict=True):
            self._field(kind, var, 1)
        source = "\n".join([*head, *self.lines, "    return b''.join(out)"])
        exec(compile(source, "<avro_writer record>", "exec"), self.env)  # our own source, generated from a schema
        encoder: Encoder = self.env["record"]
        return encoder

    def _emit(self, depth: int, line: str) -> None:
        self.lines.append("    " * depth + line)

    def _constant(self, value: Any) -> str:
        name = f"c{len(self.env)}"
        self.env[name] = value
        return name

    def _field(self, kind: Any, x: str, depth: int) -> None:
        if isinstance(kind, Mapping) and kind.get("type") not in ("record", "enum", "array", "map"):
            kind = kind["type"]  # {"type": "long", "logicalType": ...}: written as the plain value
        if isinstance(kind, list) and len(kind) == 2 and "null" in kind and kind[0] != kind[1]:
            null_first = kind[0] == "null"
            null_tag, value_tag = (_NULL, _SOME) if null_first else (_SOME, _NULL)
            self._emit(depth, f"if {x} is None: a({null_tag!r})")
            self._emit(depth, "else:")
            self._emit(depth + 1, f"a({value_tag!r})")
            self._field(kind[1] if null_first else kind[0], x, depth + 1)
        elif kind in ("long", "int"):
            lo, hi = (_LONG_MIN, _LONG_MAX) if kind == "long" else (_INT_MIN, _INT_MAX)
            self._emit(depth, self._LONG.format(x=x, lo=lo, hi=hi))
            self._emit(depth, f"{x} = ({x} << 1) ^ ({x} >> 63)")
            self._emit(depth, f"a(_SMALL[{x}] if {x} < 128 else _varint({x}))")
        elif kind == "double":
            self._emit(depth, f"if type({x}) is not float: raise Unfit")
            self._emit(depth, f"a(_DOUBLE({x}))")
        elif kind == "string":
            known = self._constant({})  # this place's repeated values (see _repeated_strings)
            self._emit(depth, f"e = {known}.get({x}) if type({x}) is str else None")
            self._emit(depth, f"a(_new_string({known}, {x}) if e is None else e)")
        else:  # booleans, bytes, enums, arrays, maps, records, other unions: an encoder of their own
            self._emit(depth, f"a({self._constant(self.compiler.node(kind))}({x}))")


def _new_string(known: dict[str, bytes], value: Any) -> bytes:
    """A string not met before at its place in a schema: encoded, and kept while there is room."""
    encoded = _string(value)
    # Short ones only: kept whatever their size, 1,024 strings of a megabyte (feature names a
    # gateway client sent, say) held 2 GB at one place of a schema for good (a review).
    if len(known) < STRINGS_KEPT and len(value) <= KEPT_CHARS:
        known[value] = encoded
    return encoded


def _array(item: Encoder) -> Encoder:
    def array(value: Any) -> bytes:
        if type(value) is not list:
            raise Unfit
        if not value:
            return _EMPTY_BLOCK
        return b"".join([_varint(len(value) << 1), *map(item, value), _EMPTY_BLOCK])

    return array


def _map(values: Encoder) -> Encoder:
    keys = _repeated_strings()

    def mapping(value: Any) -> bytes:
        if type(value) is not dict:
            raise Unfit
        if not value:
            return _EMPTY_BLOCK
        parts = [_varint(len(value) << 1)]
        for key, item in value.items():
            parts.append(keys(key))
            parts.append(values(item))
        parts.append(_EMPTY_BLOCK)
        return b"".join(parts)

    return mapping
