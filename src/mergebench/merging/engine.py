"""Run a merge method over checkpoints, streaming tensor by tensor, and write the merged checkpoint.

Everything that can make a merge invalid is checked before the first tensor is merged
(unknown or out-of-range hyperparameters, too few or too many experts, missing statistics of a
data-aware method, incompatible checkpoints); what can only be seen while streaming (NaN/Inf in
an expert) aborts the merge, and because callers write into a temporary directory, nothing
half-written survives.

Tensors are merged on every core at once (``MergeContext.threads``, default one per core; see
:mod:`mergebench.merging.threads`) while the writer takes the finished ones in order. Per-tensor
results never depend on the thread: random methods seed per tensor.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from mergebench import progress
from mergebench.checkpoint import CheckpointReader, ShardedWriter, check_compatible, copy_tokenizer_files, vocab_aligned
from mergebench.errors import CheckpointError, UsageError
from mergebench.merging.api import MergeContext, MergeMethod, TensorInputs
from mergebench.merging.plain import NeedsTorch, PlainForm, merged_bytes, plain_form
from mergebench.merging.threads import keep_freed_memory, merge_threads, ordered_map, worker_count
from mergebench.specs import MethodSpec

if TYPE_CHECKING:
    import torch


class LazyExperts(Sequence):
    """The experts' tensors for one name, read, vocabulary-aligned, cast to float32 and checked on access.

    Methods that stream over experts (task arithmetic, TIES) then hold one expert in float32 at a
    time instead of all of them; indexing twice reads twice (from the page cache).
    """

    def __init__(self, name: str, base: "torch.Tensor", readers: Mapping[str, CheckpointReader], device: str) -> None:
        self.name, self.base, self.device = name, base, device
        self.items = list(readers.items())
        self.checked: set[int] = set()

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index):
        import torch

        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        label, reader = self.items[index]
        tensor = vocab_aligned(self.base, reader.get(self.name).to(self.device, torch.float32))
        if index not in self.checked:  # a second pass over the same tensor reads the same bytes
            check_finite(tensor, label, self.name, reader.directory)
            self.checked.add(index)
        return tensor

    def task_vector(self, index: int, rows: tuple[int, int] | None = None) -> "torch.Tensor":
        """expert − base straight from the stored dtype (NaN/Inf in the expert stays non-finite in τ).

        ``rows=(start, stop)`` reads only those rows of the first dimension (for tensors too large
        to hold every expert's task vector at once); NaN/Inf is then checked on every read.
        """
        import torch

        label, reader = self.items[index]
        base = self.base if rows is None else self.base[rows[0]:rows[1]]
        raw = (reader.get(self.name) if rows is None else reader.get_rows(self.name, *rows)).to(self.device)
        if rows is not None or index not in self.checked:  # the stored values: half the bytes of τ in bf16
            check_finite(raw, label, self.name, reader.directory)
            self.checked.add(index)
        if base.dim() and raw.shape[0] > base.shape[0]:  # extra vocabulary rows: dropped
            raw = raw[: base.shape[0]]
        part = base if base.dim() == 0 else base[: raw.shape[0]]
        if raw.dtype == base.dtype:
            tau = raw - part
        else:  # cast into τ's own memory, then subtract in place: the same float32 values as raw − base,
            tau = raw.to(base.dtype)  # in two fast passes instead of one slow mixed-dtype pass
            tau.sub_(part)
        if base.dim() and tau.shape[0] < base.shape[0]:  # fewer vocabulary rows: the base's rows, a zero task vector
            tau = torch.cat([tau, torch.zeros_like(base[tau.shape[0]:])])
        return tau


def check_finite(tensor: "torch.Tensor", label: str, name: str, directory: Path, *, what: str = "") -> None:
    """Raise naming expert (or ``what``) and tensor when ``tensor`` has NaN/Inf (one fast sum; a full scan only to confirm)."""
    import torch

    if math.isfinite(float(tensor.sum())) or bool(torch.isfinite(tensor).all()):
        return
    raise CheckpointError(
        f"{what or f'expert {label!r}'} has NaN or Inf values in tensor {name!r} ({directory}); "
        f"{'the checkpoint' if what else 'the expert'} is broken (diverged training or a bad conversion): "
        "retrain or re-download it"
    )


@dataclass(frozen=True)
class MergeReport:
    out_dir: Path
    method: str
    params: dict[str, Any]
    seconds: float
    merged_tensors: int
    kept_tensors: int
    total_bytes: int


class StreamedInputs(TensorInputs):
    def __init__(self, base: CheckpointReader, experts: Mapping[str, CheckpointReader], names: list[str], device: str,
                 *, pool: ThreadPoolExecutor | None = None, window: int = 1) -> None:
        super().__init__(names, pool=pool, window=window)
        self.base, self.experts, self.device = base, experts, device

    def numel(self, name: str) -> int:
        return math.prod(self.base.shape(name))

    def available(self) -> list[str]:
        return self.base.names()

    def tensors(self, name: str) -> tuple["torch.Tensor", Sequence["torch.Tensor"]]:
        import torch

        stored = self.base.get(name)
        check_finite(stored, "base", name, self.base.directory, what="the base")
        base = stored.to(self.device, torch.float32)
        return base, LazyExperts(name, base, self.experts, self.device)


def open_inputs(base_dir: Path, expert_dirs: Mapping[str, Path], *, allow_pickle: bool = False
                ) -> tuple[CheckpointReader, dict[str, CheckpointReader]]:
    """Open and cross-check the base and experts (raises before anything is merged)."""
    base = CheckpointReader(base_dir, allow_pickle=allow_pickle)
    experts = {label: CheckpointReader(path, allow_pickle=allow_pickle) for label, path in expert_dirs.items()}
    check_compatible(base, experts)
    return base, experts


def build_method(spec: MethodSpec, params: Mapping[str, Any], context: MergeContext, n_experts: int) -> MergeMethod:
    """Check the expert count, hyperparameters and statistics, then instantiate the method."""
    if n_experts < spec.min_experts:
        raise UsageError(
            f"method {spec.name!r} needs at least {spec.min_experts} experts, got {n_experts}; "
            "pass more --expert DOMAIN=DIR"
        )
    if spec.max_experts is not None and n_experts > spec.max_experts:
        raise UsageError(f"method {spec.name!r} merges at most {spec.max_experts} experts, got {n_experts}")
    resolved = spec.resolve_params(params)
    cls = spec.load()
    if cls.statistic:
        missing = [d for d in context.domains if d not in context.statistics]
        if missing or not context.domains:
            raise UsageError(
                f"method {spec.name!r} needs {cls.statistic} statistics of every expert, computed from samples "
                f"of its training data; missing for: {', '.join(missing) or 'all'}. On the command line pass "
                "--samples DOMAIN=FILE.jsonl for every --expert"
            )
    return cls(resolved, context)


def merge_checkpoints(
    spec: MethodSpec,
    params: Mapping[str, Any],
    base_dir: Path,
    expert_dirs: Mapping[str, Path],
    out_dir: Path,
    *,
    context: MergeContext | None = None,
    metadata: Mapping[str, str] | None = None,
    allow_pickle: bool = False,
    max_shard_bytes: int | None = None,
    allow_plain: bool = True,
    hashed: bool = True,
) -> MergeReport:
    """Merge ``expert_dirs`` (label → checkpoint) into ``base_dir``'s architecture, writing ``out_dir``.

    A method with a torch-free form merges through :mod:`mergebench.merging.plain` when the
    checkpoints allow it (the same bytes, without importing torch); ``allow_plain=False`` always
    takes the torch engine (the tests compare the two). ``hashed=False``: no SHA-256 of the shards, for an output
    that is not a cache artifact (see :class:`ShardedWriter`)."""
    started = time.perf_counter()
    context = context or MergeContext()
    if tuple(context.domains) != tuple(expert_dirs):  # statistics and per-expert state follow this order
        context = replace(context, domains=tuple(expert_dirs))
    method = build_method(spec, params, context, len(expert_dirs))
    base, experts = open_inputs(base_dir, expert_dirs, allow_pickle=allow_pickle)
    run = partial(_merge, spec, method, context, base, experts, out_dir=Path(out_dir), started=started,
                  metadata=metadata, max_shard_bytes=max_shard_bytes, hashed=hashed)
    keep_freed_memory()
    form = plain_form(method, context, base, experts) if allow_plain else None
    if form is not None:
        try:
            return run(None, plain=form)
        except NeedsTorch:  # NaN/Inf in an input, or an overflow: the torch engine raises its error or writes its bits
            pass
    with merge_threads(context) as pool:
        return run(pool)


def _merge(spec: MethodSpec, method: MergeMethod, context: MergeContext, base: CheckpointReader,
           experts: Mapping[str, CheckpointReader], pool: ThreadPoolExecutor | None, *, out_dir: Path,
           started: float, metadata: Mapping[str, str] | None, max_shard_bytes: int | None, hashed: bool,
           plain: PlainForm | None = None) -> MergeReport:
    names = base.names()
    merged_names = [n for n in names if method.merges(n)]
    if plain is None:
        window = worker_count(context) + 1
        inputs = StreamedInputs(base, experts, merged_names, context.device, pool=pool, window=window)
        method.prepare(inputs)

    stamp = {
        "mergebench_method": spec.name,
        "mergebench_method_version": spec.version,
        "mergebench_params": json.dumps(method.params, sort_keys=True),
        **(metadata or {}),
    }
    # every output tensor has the base's name, dtype and shape, in its order: the writer can stream to its shards
    writer_kwargs = {"metadata": stamp, "layout": [(n, base.dtype_name(n), base.shape(n)) for n in names],
                     "hashed": hashed}
    if max_shard_bytes:
        writer_kwargs["max_shard_bytes"] = max_shard_bytes
    writer = ShardedWriter(out_dir, **writer_kwargs)
    with progress.progress(f"merge {spec.name}", total=len(names), unit="tensors") as bar:
        if plain is not None:
            try:
                for name, data in merged_bytes(plain, method, base, experts, worker_count(context)):
                    writer.add_bytes(name, base.dtype_name(name), base.shape(name), memoryview(data))
                    bar.advance()
            except NeedsTorch:
                writer.discard()
                raise
        else:
            produce = _torch_producer(spec, method, base, inputs, set(merged_names))
            for name, tensor in zip(names, ordered_map(pool, produce, names, window + _write_ahead(base, names))):
                writer.add(name, tensor)
                bar.advance()
    writer.close()
    _write_side_files(base.directory, list(experts.values()), out_dir, spec, method.params, stamp,
                      inputs=(base, experts, method))
    return MergeReport(
        out_dir=out_dir,
        method=spec.name,
        params=dict(method.params),
        seconds=time.perf_counter() - started,
        merged_tensors=len(merged_names),
        kept_tensors=len(names) - len(merged_names),
        total_bytes=sum(p.stat().st_size for p in out_dir.glob("*.safetensors")),
    )


def _torch_producer(spec: MethodSpec, method: MergeMethod, base: CheckpointReader, inputs: StreamedInputs,
                    merged_set: set[str]) -> Callable[[str], "torch.Tensor"]:
    import torch

    def produce(name: str) -> "torch.Tensor":
        with torch.inference_mode():
            original = base.get(name)
            if name not in merged_set:
                return original
            base_t, expert_ts = inputs.tensors(name)
            result = method.merge_tensor(name, base_t, expert_ts)
            if tuple(result.shape) != tuple(original.shape):
                raise RuntimeError(
                    f"method {spec.name!r} returned shape {list(result.shape)} for {name!r}, expected {list(original.shape)}"
                )
            return result.to(original.dtype)

    return produce


WRITE_AHEAD_BYTES = 64 * 1024**2


def _write_ahead(base: CheckpointReader, names: list[str]) -> int:
    """How many merged tensors may wait for the writer beyond one per worker: ~64 MB of typical (median) ones.

    Results are written in order, so with one result per worker in flight a large tensor (the
    embeddings, first in the file) left the other workers idle until it was done; finished small
    tensors may queue behind it instead."""
    sizes = sorted(math.prod(base.shape(n)) * 4 for n in names) or [1]
    return min(64, WRITE_AHEAD_BYTES // max(1, sizes[len(sizes) // 2]))


def _write_side_files(base_dir: Path, experts: list[CheckpointReader], out_dir: Path, spec: MethodSpec,
                      params: Mapping[str, Any], stamp: Mapping[str, str], *,
                      inputs: tuple[CheckpointReader, Mapping[str, CheckpointReader], MergeMethod] | None = None) -> None:
    shutil.copy2(base_dir / "config.json", out_dir / "config.json")
    copied = copy_tokenizer_files(base_dir, out_dir)
    has_template = "chat_template.jinja" in copied or _config_has_template(out_dir)
    if not has_template:
        # A pretrained base has no chat template but its experts were trained with one; keep
        # theirs so the merged model can be prompted like the experts it came from.
        for expert in experts:
            template = expert.directory / "chat_template.jinja"
            if template.is_file():
                shutil.copy2(template, out_dir / "chat_template.jinja")
                break
    lines = [
        "---",
        "library_name: transformers",
        "tags: [merge, mergebench]",
        "---",
        f"# Merged with mergebench: `{spec.name}`",
        "",
        f"{spec.summary}".strip(),
        "",
        f"- method: `{spec.name}` (version {spec.version}){' — ' + spec.reference_url if spec.reference_url else ''}",
        f"- hyperparameters: `{json.dumps(dict(params), sort_keys=True)}`",
        f"- base: `{base_dir}`",
        *[f"- expert: `{e.directory}`" for e in experts],
        *[f"- {k}: `{v}`" for k, v in stamp.items() if k.startswith("mergebench_") and k not in {"mergebench_params", "mergebench_method", "mergebench_method_version"}],
        *([f"- {_write_mergekit_config(out_dir, spec, params, *inputs)}"] if inputs else []),
        "",
    ]
    (out_dir / "README.md").write_text("\n".join(lines))


def _write_mergekit_config(out_dir: Path, spec: MethodSpec, params: Mapping[str, Any], base: CheckpointReader,
                           experts: Mapping[str, CheckpointReader], method: MergeMethod) -> str:
    """``mergekit_config.yml``, as mergekit writes beside its merges: the config that reproduces this one, or why none does."""
    from mergebench.merging.mergekit_export import write_mergekit_config

    names = base.names()
    return write_mergekit_config(out_dir, spec.name, spec.impl, params, base.directory,
                                 {label: reader.directory for label, reader in experts.items()}, names, method.merges,
                                 base.dtype_name(names[0]) if names else "F32")


def _config_has_template(directory: Path) -> bool:
    config = directory / "tokenizer_config.json"
    if not config.is_file():
        return False
    try:
        return bool(json.loads(config.read_text()).get("chat_template"))
    except ValueError:
        return False
