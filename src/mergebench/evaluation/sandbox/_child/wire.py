"""Length-prefixed frames and a literal-only value codec for the driver <-> candidate pipes.

Why not pickle: unpickling runs constructors chosen by the sender, so a candidate could make the
driver execute code. Why not plain JSON: tests compare tuples, sets and big integers. Values are
JSON with one-key tagged objects for what JSON lacks; decoding builds only plain Python literals
(``None``, ``bool``, ``int``, ``float``, ``complex``, ``str``, ``bytes``, ``list``, ``tuple``,
``dict``, ``set``, ``frozenset``) and references the receiving side resolves itself. Instances
of subclasses travel as their base type (a ``Counter`` as a ``dict``, a namedtuple as a
``tuple``), so a subclass's own ``__eq__`` never reaches the receiver; anything else becomes a
reference.
"""

from __future__ import annotations

import os

try:  # the C half of json, already loaded at start-up: importing json would pull in re, enum, ... (~20 ms)
    import _json
except ImportError:  # pragma: no cover - other Pythons
    _json = None

MAX_FRAME = 16 << 20  # bytes one candidate reply may take; more is a protocol error

# Tags of encoded values (JSON objects with exactly one of these keys, "h" has two more).
_INT, _TUPLE, _DICT, _SET, _FROZENSET, _BYTES, _COMPLEX = "i", "t", "d", "s", "f", "b", "c"
HANDLE, REF = "h", "r"  # a candidate object (candidate -> driver), sent back by id (driver -> candidate)
_SAFE_INT = 1 << 53
_BASES = (int, float, complex, str, bytes, list, tuple, dict, set, frozenset)


class ProtocolError(Exception):
    """A frame or value that breaks the protocol (too large, truncated, or not a literal)."""


def encode(value, other=None):
    """``value`` as JSON-ready data; ``other(x)`` encodes anything that is not a literal (or raises)."""
    kind = type(value)
    if value is None or kind is bool or kind is str:
        return value
    if kind is int:
        return value if -_SAFE_INT < value < _SAFE_INT else {_INT: hex(value)}
    if kind is float:
        return value  # json writes NaN/Infinity, which json.loads reads back
    if kind is list:
        return [encode(v, other) for v in value]
    if kind is tuple:
        return {_TUPLE: [encode(v, other) for v in value]}
    if kind is dict:
        return {_DICT: [[encode(k, other), encode(v, other)] for k, v in value.items()]}
    if kind is set or kind is frozenset:
        return {_SET if kind is set else _FROZENSET: [encode(v, other) for v in value]}
    if kind is bytes:
        return {_BYTES: value.decode("latin-1")}
    if kind is complex:
        return {_COMPLEX: [value.real, value.imag]}
    for base in _BASES:
        if isinstance(value, base):
            return encode(base(value), other)
    if other is None:
        raise TypeError(f"cannot pass a {kind.__name__} across the sandbox: only plain literals")
    return other(value)


def encoded_dict(items: dict) -> dict:
    """A dict whose values are already encoded (keys are plain strings)."""
    return {_DICT: [[key, value] for key, value in items.items()]}


def decode(data, resolve=None):
    """Inverse of :func:`encode` for a parsed JSON document; ``resolve(tag, obj)`` maps references."""

    def hook(obj):
        if len(obj) == 1:
            (tag, item), = obj.items()
            if tag == _TUPLE and type(item) is list:
                return tuple(item)
            if tag == _DICT and type(item) is list and all(type(p) is list and len(p) == 2 for p in item):
                return {k: v for k, v in item}
            if tag == _SET and type(item) is list:
                return set(item)
            if tag == _FROZENSET and type(item) is list:
                return frozenset(item)
            if tag == _INT and type(item) is str:
                return int(item, 16)
            if tag == _BYTES and type(item) is str:
                return item.encode("latin-1")
            if tag == _COMPLEX and type(item) is list and len(item) == 2:
                return complex(*(float(x) for x in item))
        if resolve is not None and (HANDLE in obj or REF in obj):
            return resolve(HANDLE if HANDLE in obj else REF, obj)
        raise ProtocolError(f"not a literal: {str(obj)[:80]}")

    try:
        return _loads(data.decode("utf-8") if isinstance(data, bytes) else data, hook)
    except (ValueError, TypeError, RecursionError, MemoryError) as exc:
        if isinstance(exc, ProtocolError):
            raise
        raise ProtocolError(f"{type(exc).__name__}: {str(exc)[:200]}") from None


class _ScannerContext:
    """The attributes _json's scanner reads from a json.JSONDecoder."""

    strict = True
    object_pairs_hook = None
    parse_float, parse_int = float, int
    parse_constant = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}.__getitem__

    def __init__(self, hook):
        self.object_hook = hook


def _loads(text: str, hook):
    if _json is None:
        import json

        return json.loads(text, object_hook=hook)
    try:
        value, end = _json.make_scanner(_ScannerContext(hook))(text, 0)
    except StopIteration:
        raise ValueError("not JSON") from None
    if end != len(text):
        raise ValueError("data after the JSON value")
    return value


def _unencodable(value):
    raise TypeError(f"{type(value).__name__} is not JSON")


def dumps(message) -> bytes:
    """Compact JSON, NaN and Infinity allowed (the peer is Python)."""
    if _json is None:
        import json

        return json.dumps(message, separators=(",", ":")).encode("utf-8")
    encoder = _json.make_encoder(None, _unencodable, _json.encode_basestring_ascii, None, ":", ",", False, False, True)
    return "".join(encoder(message, 0)).encode("ascii")


def loads(data: bytes):
    """Plain JSON (frames from the harness)."""
    return _loads(data.decode("utf-8"), None)


def send(fd: int, payload: bytes) -> None:
    """Write one frame: 8-byte big-endian length, then the payload."""
    view = memoryview(len(payload).to_bytes(8, "big") + payload)
    while view:
        view = view[os.write(fd, view):]


def recv(fd: int, limit: int = MAX_FRAME) -> bytes:
    """Read one frame, refusing frames over ``limit`` bytes; EOFError when the writer is gone."""
    size = int.from_bytes(_exactly(fd, 8), "big")
    if size > limit:
        raise ProtocolError(f"a frame of {size} bytes exceeds the {limit}-byte cap")
    return _exactly(fd, size)


def _exactly(fd: int, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise EOFError("the other side closed the pipe")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
