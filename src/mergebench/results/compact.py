"""Per-item values in a results file, compact: bits for 0/1 scores, base64 float32 otherwise.

A case's per-item values travel inline (``{"enc": "f32", "n": 8, "data": "..."}``) in
``user_properties`` under xdist. A results file instead keeps one *pool* of distinct arrays keyed
by a short content hash, and cases point into it: the base's and expert's values on a task are
the same for every method's case of that (model, task), so they are stored once, and a 541-item
binary task costs 68 bytes of bits per array rather than a JSON list of floats.

Values are rounded to float32 when they are recorded (:func:`as_float32`), so writing and
reading them is exact.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any, Mapping, Sequence

import numpy as np

from mergebench.errors import UsageError

ENCODINGS = ("bits", "f32", "u16")


def as_float32(values: Sequence[float]) -> tuple[float, ...]:
    """``values`` as the float32 numbers a results file can hold exactly."""
    return tuple(np.asarray(values, dtype=np.float32).astype(float).tolist())


def encode(values: Sequence[float], *, integers: bool = False) -> dict[str, Any]:
    """One array as ``{"enc", "n", "data"}``: bits when every value is 0 or 1, else float32 (or uint16 counts)."""
    array = np.asarray(values, dtype=np.float64)
    if integers:
        if array.size and (array.min() < 0 or array.max() > 65535 or np.any(array != np.round(array))):
            raise ValueError("u16 encoding holds whole numbers 0..65535 only")
        enc, raw = "u16", array.astype("<u2").tobytes()
    elif np.all((array == 0) | (array == 1)):
        enc, raw = "bits", np.packbits(array.astype(np.uint8)).tobytes()
    else:
        enc, raw = "f32", array.astype("<f4").tobytes()
    return {"enc": enc, "n": int(array.size), "data": base64.b64encode(raw).decode("ascii")}


def decode(blob: Mapping[str, Any], where: str) -> tuple[float, ...]:
    """The values of an encoded array; a malformed one is a :class:`UsageError` naming ``where`` it is."""
    try:
        enc, n, raw = blob["enc"], int(blob["n"]), base64.b64decode(blob["data"], validate=True)
    except (KeyError, TypeError, ValueError) as exc:
        raise UsageError(f"{where}: malformed per-item values ({type(exc).__name__}: {exc})") from None
    expected = {"bits": (n + 7) // 8, "f32": 4 * n, "u16": 2 * n}.get(enc)
    if expected is None:
        raise UsageError(f"{where}: unknown per-item encoding {enc!r} (known: {', '.join(ENCODINGS)})")
    if n < 0 or len(raw) != expected:
        raise UsageError(f"{where}: per-item values say n={n} but hold {len(raw)} bytes of {enc} "
                         f"({expected} expected): the file was edited or truncated")
    if enc == "bits":
        array = np.unpackbits(np.frombuffer(raw, dtype=np.uint8))[:n].astype(float)
    elif enc == "f32":
        array = np.frombuffer(raw, dtype="<f4").astype(float)
    else:
        array = np.frombuffer(raw, dtype="<u2").astype(float)
    return tuple(array.tolist())


def blob_key(blob: Mapping[str, Any]) -> str:
    return hashlib.sha256(f"{blob['enc']}:{blob['n']}:{blob['data']}".encode()).hexdigest()[:16]


class Pool:
    """Distinct encoded arrays of a results file, each stored once under its content hash."""

    def __init__(self, blobs: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self.blobs: dict[str, Mapping[str, Any]] = dict(blobs or {})

    def put(self, blob: Mapping[str, Any]) -> str:
        key = blob_key(blob)
        self.blobs.setdefault(key, blob)
        return key

    def get(self, ref: Any, where: str) -> Mapping[str, Any]:
        if isinstance(ref, Mapping):  # inline, as in user_properties
            return ref
        if not isinstance(ref, str) or ref not in self.blobs:
            raise UsageError(f"{where}: per-item values {ref!r} are not in the file's 'item_values' pool: "
                             "the file was edited or truncated")
        return self.blobs[ref]
