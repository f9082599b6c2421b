"""Read a Hugging Face checkpoint one tensor at a time from its safetensors shards.

Only the shard headers are parsed up front, so opening a 9B checkpoint costs milliseconds and
memory stays at one tensor per read. Tensors are read with ``pread`` into memory the caller
owns rather than handed out as views of a memory map: a mapped file's touched pages count
towards the process's resident memory for as long as the map lives, so streaming a merge
through maps would hold every input in RSS; reads keep it at the tensors in use. The one
exception is the torch-free merge's pieces (:meth:`CheckpointReader.mapped_elements`), which
drops each piece's pages as soon as it has read them. A truncated or corrupt shard, a missing shard, or a
checkpoint that only has pickle files (``pytorch_model.bin``) is a :class:`CheckpointError`
that names the file and the fix; pickles are read only when the caller opts in.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from mergebench.errors import CheckpointError

if TYPE_CHECKING:
    import numpy
    import torch

INDEX_FILE = "model.safetensors.index.json"
DTYPE_NAMES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
                "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


class _Dtypes(dict):
    """safetensors dtype name → torch dtype, resolved on first use (no torch import at collection)."""

    def get(self, key, default=None):
        if not self:
            import torch

            self.update({k: getattr(torch, v) for k, v in DTYPE_NAMES.items()})
        return super().get(key, default)


_DTYPES = _Dtypes()
SINGLE_FILE = "model.safetensors"


def _redownload_hint(directory: Path) -> str:
    return (
        f"delete {directory} and fetch it again (for a hub model: "
        "`huggingface-cli download <repo> --force-download`), or rebuild the artifact"
    )


def check_safetensors(directory: Path | str) -> list[Path]:
    """Check every safetensors weight file of ``directory`` before another library loads it; return them.

    Parses the headers only and checks that each file is as long as its header says (the
    safetensors library refuses a file its tensors do not exactly cover), so a truncated or
    corrupt shard, or a shard missing from the index, is a :class:`CheckpointError` naming the
    file and the fix instead of a loader's traceback. Milliseconds for any size. A folder without
    safetensors files is left to the loader (it has its own message for that).
    """
    directory = Path(directory)
    if not (directory / INDEX_FILE).is_file() and not any(directory.glob("*.safetensors")):
        return []
    reader = CheckpointReader(directory)
    try:
        return sorted(set(reader.weight_map.values()))
    finally:
        reader.close()


class CheckpointReader:
    """Lazy view of the tensors of the checkpoint in ``directory``.

    Args:
        directory: a folder with ``model.safetensors`` or a sharded ``model.safetensors.index.json``.
        allow_pickle: also accept ``pytorch_model*.bin`` (loaded with ``torch.load(weights_only=True)``).
            Off by default: only enable it for files you trust.
    """

    def __init__(self, directory: Path | str, *, allow_pickle: bool = False) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise CheckpointError(f"checkpoint directory {self.directory} does not exist")
        self._handles: dict[Path, Any] = {}
        self._layouts: dict[Path, tuple[int, dict[str, Any]]] = {}
        self._files: dict[Path, int] = {}
        self._maps: dict[Path, Any] = {}
        self._maps_lock = threading.Lock()
        self._pickled: dict[str, "torch.Tensor"] | None = None
        self.weight_map: dict[str, Path] = self._read_weight_map(allow_pickle)

    # -- layout ----------------------------------------------------------------------------
    def _read_weight_map(self, allow_pickle: bool) -> dict[str, Path]:
        index = self.directory / INDEX_FILE
        if index.is_file():
            try:
                mapping = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError) as exc:
                raise CheckpointError(f"{index} is not a valid safetensors index ({exc}); {_redownload_hint(self.directory)}") from None
            weight_map = {name: self.directory / shard for name, shard in mapping.items()}
            for shard in sorted(set(weight_map.values())):
                if not shard.is_file():
                    raise CheckpointError(
                        f"shard {shard.name} listed in {index.name} is missing from {self.directory}; "
                        + _redownload_hint(self.directory)
                    )
            for shard in sorted(set(weight_map.values())):
                self._open(shard)
            return weight_map
        shards = sorted(self.directory.glob("*.safetensors"))
        if shards:
            weight_map = {}
            for shard in shards:
                for name in self._open(shard).keys():
                    weight_map[name] = shard
            return weight_map
        pickles = sorted(self.directory.glob("pytorch_model*.bin"))
        if pickles:
            if not allow_pickle:
                raise CheckpointError(
                    f"{self.directory} has only pickle weights ({pickles[0].name}); mergebench loads "
                    "safetensors by default. Convert it (load and save_pretrained with "
                    "safe_serialization=True), or pass --allow-pickle if you trust the file"
                )
            return self._load_pickles(pickles)
        raise CheckpointError(f"no model weights (*.safetensors) in {self.directory}")

    def _open(self, shard: Path) -> Any:
        handle = self._handles.get(shard)
        if handle is None:
            from safetensors import safe_open

            try:
                handle = safe_open(str(shard), framework="numpy")  # headers only: "pt" would import torch
            except Exception as exc:  # SafetensorError: header too small, bad JSON, truncated data
                raise CheckpointError(
                    f"{shard} is not a readable safetensors file ({exc}); it is probably truncated or "
                    f"corrupt: {_redownload_hint(self.directory)}"
                ) from None
            self._handles[shard] = handle
        return handle

    def _load_pickles(self, files: list[Path]) -> dict[str, Path]:
        import torch

        self._pickled = {}
        weight_map = {}
        for path in files:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
            for name, tensor in state.items():
                self._pickled[name] = tensor
                weight_map[name] = path
        return weight_map

    # -- access ----------------------------------------------------------------------------
    def names(self) -> list[str]:
        return list(self.weight_map)

    def __contains__(self, name: object) -> bool:
        return name in self.weight_map

    def __iter__(self) -> Iterator[str]:
        return iter(self.weight_map)

    def get(self, name: str) -> "torch.Tensor":
        try:
            shard = self.weight_map[name]
        except KeyError:
            raise CheckpointError(f"tensor {name!r} is not in the checkpoint {self.directory}") from None
        if self._pickled is not None:
            return self._pickled[name]
        try:
            return self._read(shard, name)
        except Exception as exc:
            raise CheckpointError(
                f"cannot read tensor {name!r} from {shard} ({exc}); {_redownload_hint(self.directory)}"
            ) from None

    def _layout(self, shard: Path) -> tuple[int, dict[str, Any]]:
        """(offset of the data section, header entries) of a shard, parsed once."""
        found = self._layouts.get(shard)
        if found is None:
            import struct

            self._open(shard)  # validates the file with the safetensors library first
            with open(shard, "rb") as handle:
                (size,) = struct.unpack("<Q", handle.read(8))
                found = (8 + size, json.loads(handle.read(size)))
            self._layouts[shard] = found
        return found

    def get_rows(self, name: str, start: int, stop: int) -> "torch.Tensor":
        """Rows ``start:stop`` (first dimension) of tensor ``name``, reading only those bytes."""
        if self._pickled is not None or name not in self.weight_map:
            return self.get(name)[start:stop]
        shard = self.weight_map[name]
        _, header = self._layout(shard)
        if _DTYPES.get(header[name]["dtype"]) is None:
            return self.get(name)[start:stop]
        return self._read(shard, name, (start, stop))

    def _read(self, shard: Path, name: str, rows: tuple[int, int] | None = None) -> "torch.Tensor":
        import torch

        start, header = self._layout(shard)
        entry = header[name]
        dtype = _DTYPES.get(entry["dtype"])
        if dtype is None:  # an exotic dtype: let the library decode it
            from safetensors import safe_open

            return safe_open(str(shard), framework="pt").get_tensor(name)
        begin, end = entry["data_offsets"]
        shape = list(entry["shape"])
        if rows is not None:
            row_bytes = (end - begin) // shape[0] if shape and shape[0] else 0
            first, last = max(0, rows[0]), min(shape[0], rows[1])
            begin, end = begin + first * row_bytes, begin + max(first, last) * row_bytes
            shape[0] = max(0, last - first)
        buffer = torch.empty(end - begin, dtype=torch.uint8)
        self._pread(shard, memoryview(buffer.numpy()), start + begin)
        return buffer.view(dtype).reshape(shape)

    def read_elements(self, name: str, start: int, out) -> None:
        """Fill ``out`` (a numpy array of the stored dtype's width) with the flat entries of ``name`` from ``start`` on.

        For the torch-free merge (:mod:`mergebench.merging.plain`), which reads a tensor in pieces small
        enough to stay in the CPU's cache; safetensors files only."""
        shard, first, _ = self._entries(name, start, len(out), out.itemsize)
        self._pread(shard, memoryview(out).cast("B"), first)

    def _entries(self, name: str, start: int, count: int, width: int | None = None) -> tuple[Path, int, int]:
        """(shard, file offset of entry ``start``, width) of ``count`` flat entries of ``width`` bytes of ``name``
        (None: the stored dtype's width)."""
        shard = self.weight_map[name]
        offset, header = self._layout(shard)
        begin, end = header[name]["data_offsets"]
        if width is None:
            from mergebench.checkpoint.writer import ELEMENT_BYTES  # the writer imports this module

            width = ELEMENT_BYTES[header[name]["dtype"]]
        if start < 0 or begin + (start + count) * width > end:
            raise CheckpointError(f"entries {start}..{start + count} are past the end of tensor {name!r}")
        return shard, offset + begin + start * width, width

    def mapped_elements(self, name: str, start: int, count: int, dtype) -> "numpy.ndarray":
        """A read-only numpy view of ``count`` flat entries of ``name`` from ``start`` on, in a memory map of its shard.

        For the torch-free merge, which reads every input once in pieces: numpy then reads the page cache
        itself, where :meth:`read_elements` has the kernel copy each piece into a buffer first (that copy was
        ~7% of a TIES merge's CPU samples under ``perf``, ~15% of Task Arithmetic's: ``merge_perf.py``).
        Safetensors files only; call :meth:`unmap_elements` once the view is read, or its pages count
        towards RSS until :meth:`close`. The shard's size was checked against its header when it was
        opened; one truncated while it is mapped ends the process with SIGBUS where ``pread`` would have
        raised, as with any mapped loader."""
        import numpy

        shard, first, _ = self._entries(name, start, count, numpy.dtype(dtype).itemsize)
        return numpy.frombuffer(self._map(shard), dtype, count, first)

    def unmap_elements(self, name: str, start: int, count: int) -> None:
        """Drop the pages under those entries from this process's memory (``madvise(MADV_DONTNEED)``).

        The page cache keeps them, and a later read of a dropped page maps it again, so the whole pages
        touching the range are dropped even where a neighbour's entries share them."""
        import mmap

        mapped = self._maps.get(self.weight_map[name])
        if mapped is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        _, first, width = self._entries(name, start, count)
        low = first - first % mmap.PAGESIZE
        high = min(len(mapped), -(-(first + count * width) // mmap.PAGESIZE) * mmap.PAGESIZE)
        if high > low:
            mapped.madvise(mmap.MADV_DONTNEED, low, high - low)

    def _map(self, shard: Path) -> Any:
        mapped = self._maps.get(shard)
        if mapped is None:
            import mmap

            with self._maps_lock:  # the merge's workers map a shard at once: one map each
                mapped = self._maps.get(shard)
                if mapped is None:
                    with open(shard, "rb") as handle:
                        mapped = self._maps[shard] = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        return mapped

    def _pread(self, shard: Path, view: memoryview, position: int) -> None:
        fd = self._files.get(shard)
        if fd is None:
            fd = self._files.setdefault(shard, os.open(shard, os.O_RDONLY))
        done = 0
        while done < len(view):
            got = os.preadv(fd, [view[done:]], position + done)
            if got <= 0:
                raise OSError(f"unexpected end of file after {done} of {len(view)} bytes")
            done += got

    @property
    def pickled(self) -> bool:
        return self._pickled is not None

    def close(self) -> None:
        for fd in self._files.values():
            os.close(fd)
        self._files.clear()
        for mapped in self._maps.values():
            try:
                mapped.close()
            except BufferError:  # a view of it is still alive: the map closes when that view is collected
                pass
        self._maps.clear()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def shape(self, name: str) -> tuple[int, ...]:
        if self._pickled is not None:
            return tuple(self._pickled[name].shape)
        return tuple(self._open(self.weight_map[name]).get_slice(name).get_shape())

    def dtype_name(self, name: str) -> str:
        if self._pickled is not None:
            return str(self._pickled[name].dtype).removeprefix("torch.")
        return str(self._open(self.weight_map[name]).get_slice(name).get_dtype())

    def metadata(self) -> dict[str, str]:
        """The header metadata of the first shard (mergebench stamps its cache key there)."""
        if self._pickled is not None or not self.weight_map:
            return {}
        first = sorted(set(self.weight_map.values()))[0]
        return dict(self._open(first).metadata() or {})

    def config(self) -> dict[str, Any]:
        path = self.directory / "config.json"
        if not path.is_file():
            raise CheckpointError(f"{self.directory} has no config.json; it is not a Hugging Face checkpoint")
        try:
            return json.loads(path.read_text())
        except ValueError as exc:
            raise CheckpointError(f"{path} is not valid JSON ({exc})") from None

    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in set(self.weight_map.values()))
