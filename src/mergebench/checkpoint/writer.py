"""Write a Hugging Face checkpoint as sharded safetensors, one tensor at a time.

Memory stays at one tensor: each tensor's bytes go to a spill file as soon as it is added, and
a shard is assembled (safetensors header, then the spilled bytes) when it is full. Shards are
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
import os
from pathlib import Path
from typing import TYPE_CHECKING

from mergebench.cache import integrity as cache_integrity
from mergebench.checkpoint.reader import INDEX_FILE, SINGLE_FILE

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


_SAFETENSORS_DTYPES = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64",
                      "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}


class ShardedWriter:
    """Spills tensors to disk as they come and closes a shard whenever ``max_shard_bytes`` would be exceeded.

    ``metadata`` goes into every shard's header (string values only, a safetensors rule).
    """

    def __init__(self, directory: Path | str, *, max_shard_bytes: int = DEFAULT_SHARD_BYTES,
                 metadata: dict[str, str] | None = None) -> None:
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

    def _flush(self) -> None:
        import struct

        header = json.dumps({"__metadata__": self.metadata, **self._entries}, separators=(",", ":")).encode()
        header += b" " * (-len(header) % 8)  # the data section starts 8-byte aligned
        path = self.directory / f".shard-{len(self._shards):05d}.tmp"
        digest = hashlib.sha256(struct.pack("<Q", len(header)) + header)
        with open(path, "wb") as out:
            out.write(struct.pack("<Q", len(header)) + header)
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
        if self._entries or not self._shards:
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

    def _record(self, path: Path, digest: str) -> None:
        self.hashes[path.name] = digest
        cache_integrity.record(path, digest)


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
