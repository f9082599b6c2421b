"""Write a Hugging Face checkpoint as sharded safetensors, one tensor at a time.

Memory stays at one tensor: each tensor's bytes go to a spill file as soon as it is added, and
a shard is assembled (safetensors header, then the spilled bytes) when it is full. A caller that
knows every tensor's name, dtype and shape up front (a merge: the base's) passes them as
``layout``: headers are then known before the first byte, so each tensor goes straight into its
shard and is hashed on the way, with no spill file to write and copy again. The files are the same. Shards are
written under temporary names and renamed to ``model-0000k-of-0000n.safetensors`` once ``n`` is
known; the index is written last. Each shard's SHA-256 is computed as its bytes stream into it
(:attr:`ShardedWriter.hashes`) and recorded for the artifact cache's manifest, so a cached merge
is never read back just to be hashed (see :mod:`mergebench.cache.integrity`).
Callers write into a temporary directory that the artifact cache renames into place, so a
crash never leaves a checkpoint that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from mergebench.cache import integrity as cache_integrity
from mergebench.checkpoint.reader import DTYPE_NAMES, INDEX_FILE, SINGLE_FILE

if TYPE_CHECKING:
    import torch

DEFAULT_SHARD_BYTES = 2 * 1024**3

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
)


_SAFETENSORS_DTYPES = {name: code for code, name in DTYPE_NAMES.items()}
ELEMENT_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


class ShardedWriter:
    """Spills tensors to disk as they come and closes a shard whenever ``max_shard_bytes`` would be exceeded.

    ``metadata`` goes into every shard's header (string values only, a safetensors rule). ``hashed=False``
    skips the SHA-256 of the shards, for a checkpoint that will not become a cache artifact (nothing builds
    its manifest, so nothing would read the digests).
    """

    def __init__(self, directory: Path | str, *, max_shard_bytes: int = DEFAULT_SHARD_BYTES,
                 metadata: dict[str, str] | None = None,
                 layout: Sequence[tuple[str, str, Sequence[int]]] | None = None, hashed: bool = True) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_shard_bytes = max_shard_bytes
        self.metadata = {"format": "pt", **(metadata or {})}
        self._entries: dict[str, dict] = {}
        self._spill = None
        self._pending_bytes = 0
        self._names: set[str] = set()
        self._shards: list[tuple[Path, list[str], str]] = []
        self.hashes: dict[str, str] = {}
        """File name → SHA-256 of every file written, filled by :meth:`close`."""
        self._total_bytes = 0
        self._closed = False
        self._plan: list[list[tuple[str, dict]]] | None = None  # per shard: (name, header entry), in order
        self._direct = None  # (file, digest, tensors left) of the shard being written straight
        self._digest = hashlib.sha256 if hashed else _NoDigest
        if layout:
            self._plan = self._planned_shards(layout)

    def _planned_shards(self, layout) -> list[list[tuple[str, dict]]] | None:
        """The shards :meth:`add` would close for tensors coming in ``layout``'s order (None: a dtype it cannot plan)."""
        shards: list[list[tuple[str, dict]]] = [[]]
        pending = 0
        for name, dtype, shape in layout:
            code = _SAFETENSORS_DTYPES.get(str(dtype).removeprefix("torch."), dtype)
            if code not in ELEMENT_BYTES:
                return None
            size = math.prod(shape) * ELEMENT_BYTES[code]
            if shards[-1] and pending + size > self.max_shard_bytes:
                shards.append([])
                pending = 0
            shards[-1].append((name, {"dtype": code, "shape": list(shape), "data_offsets": [pending, pending + size]}))
            pending += size
        return shards

    def _write_direct(self, name: str, dtype: str, shape: list[int], data: memoryview) -> None:
        if self._direct is None:
            if not self._plan:
                raise ValueError(f"tensor {name!r} is not in the writer's layout (it has no more tensors)")
            entries = dict(self._plan[0])
            header = self._header(entries)
            out = open(self.directory / f".shard-{len(self._shards):05d}.tmp", "wb")
            out.write(header)
            self._direct = (out, self._digest(header), list(entries))
            self._entries = entries
        out, digest, left = self._direct
        expected = self._entries[left[0]]
        if name != left[0] or dtype != expected["dtype"] or shape != expected["shape"]:
            raise ValueError(f"tensor {name!r} ({dtype} {shape}) does not come where the layout expects "
                             f"{left[0]!r} ({expected['dtype']} {expected['shape']})")
        digest.update(data)
        out.write(data)
        left.pop(0)
        if not left:
            out.close()
            self._shards.append((Path(out.name), list(self._entries), digest.hexdigest()))
            self._plan.pop(0)
            self._direct, self._entries = None, {}

    def _header(self, entries: dict) -> bytes:
        import struct

        header = json.dumps({"__metadata__": self.metadata, **entries}, separators=(",", ":")).encode()
        header += b" " * (-len(header) % 8)  # the data section starts 8-byte aligned
        return struct.pack("<Q", len(header)) + header

    def add(self, name: str, tensor: "torch.Tensor") -> None:
        import torch

        if self._closed:
            raise RuntimeError("writer is closed")
        if name in self._names:
            raise ValueError(f"tensor {name!r} written twice")
        dtype = _SAFETENSORS_DTYPES.get(str(tensor.dtype).removeprefix("torch."))
        if dtype is None:
            raise ValueError(f"tensor {name!r} has dtype {tensor.dtype}, which safetensors files here do not store")
        size = tensor.numel() * tensor.element_size()
        if self._plan is not None:
            data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
            self._write_direct(name, dtype, list(tensor.shape), memoryview(data.numpy()))
            self._names.add(name)
            self._total_bytes += size
            return
        if self._entries and self._pending_bytes + size > self.max_shard_bytes:
            self._flush()
        if self._spill is None:
            self._spill = open(self.directory / f".shard-{len(self._shards):05d}.data.tmp", "w+b")
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
        self._spill.write(memoryview(data.numpy()))
        self._entries[name] = {"dtype": dtype, "shape": list(tensor.shape),
                               "data_offsets": [self._pending_bytes, self._pending_bytes + size]}
        self._names.add(name)
        self._pending_bytes += size
        self._total_bytes += size

    def add_bytes(self, name: str, dtype: str, shape: Sequence[int], data: memoryview) -> None:
        """Add a tensor given as its stored bytes (``dtype`` a safetensors code such as ``BF16``), without torch.

        Only for a writer given a ``layout`` (the torch-free merge, :mod:`mergebench.merging.plain`)."""
        if self._closed:
            raise RuntimeError("writer is closed")
        if self._plan is None:
            raise ValueError("add_bytes needs a writer given a layout")
        if name in self._names:
            raise ValueError(f"tensor {name!r} written twice")
        if len(data) != math.prod(shape) * ELEMENT_BYTES.get(dtype, -1):
            raise ValueError(f"tensor {name!r}: {len(data)} bytes do not make a {dtype} tensor of shape {list(shape)}")
        self._write_direct(name, dtype, list(shape), data)
        self._names.add(name)
        self._total_bytes += len(data)

    def discard(self) -> None:
        """Close without a checkpoint: the temporary files written so far are removed."""
        self._closed = True
        if self._direct is not None:
            self._direct[0].close()
        for handle in (self._spill,):
            if handle is not None:
                handle.close()
        for path in self.directory.glob(".shard-*.tmp"):
            path.unlink(missing_ok=True)
        self._direct = self._spill = None

    def _flush(self) -> None:
        header = self._header(self._entries)
        path = self.directory / f".shard-{len(self._shards):05d}.tmp"
        digest = self._digest(header)
        with open(path, "wb") as out:
            out.write(header)
            if self._spill is not None:
                self._spill.seek(0)
                while block := self._spill.read(16 * 1024 * 1024):
                    digest.update(block)  # the bytes pass through here anyway: hashing them costs no read
                    out.write(block)
        if self._spill is not None:
            self._spill.close()
            os.unlink(self._spill.name)
            self._spill = None
        self._shards.append((path, list(self._entries), digest.hexdigest()))
        self._entries = {}
        self._pending_bytes = 0

    def close(self) -> list[Path]:
        """Flush, give shards their final names, write the index; return the shard paths."""
        if self._closed:
            raise RuntimeError("writer is closed")
        if self._plan is not None:
            missing = [name for shard in self._plan for name, _ in shard if name not in self._names]
            if missing:
                raise ValueError(f"{len(missing)} tensors of the layout were never added (first: {missing[0]!r})")
        elif self._entries or not self._shards:
            self._flush()
        self._closed = True
        count = len(self._shards)
        if count == 1:
            final = self.directory / SINGLE_FILE
            os.replace(self._shards[0][0], final)
            self._record(final, self._shards[0][2])
            return [final]
        weight_map: dict[str, str] = {}
        finals = []
        for i, (tmp, names, digest) in enumerate(self._shards, start=1):
            final = self.directory / f"model-{i:05d}-of-{count:05d}.safetensors"
            os.replace(tmp, final)
            self._record(final, digest)
            finals.append(final)
            weight_map.update({name: final.name for name in names})
        index = {"metadata": {"total_size": self._total_bytes}, "weight_map": weight_map}
        path = self.directory / INDEX_FILE
        self.hashes[INDEX_FILE] = cache_integrity.write_bytes(path, json.dumps(index, indent=2, sort_keys=True).encode())
        return finals

    def _record(self, path: Path, digest: str | None) -> None:
        if digest is None:  # hashed=False
            return
        self.hashes[path.name] = digest
        cache_integrity.record(path, digest)


class _NoDigest:
    """What ``hashlib.sha256`` offers the writer, computing nothing (``hashed=False``)."""

    def __init__(self, data: bytes = b"") -> None:
        pass

    def update(self, data) -> None:
        pass

    def hexdigest(self) -> None:
        return None


def copy_tokenizer_files(source: Path, destination: Path) -> list[str]:
    """Copy tokenizer, chat template and generation config files that exist in ``source`` (hashed as copied)."""
    copied = []
    for name in TOKENIZER_FILES:
        path = Path(source) / name
        if path.is_file():
            with open(path, "rb") as handle:
                cache_integrity.copy_stream(handle, Path(destination) / name)
            copied.append(name)
    return copied
