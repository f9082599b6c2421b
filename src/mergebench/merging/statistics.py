"""The harness around the per-expert statistics of data-aware methods: samples in, cached folders out.

Fisher Merging, RegMean and Localize-and-Stitch need something computed from each expert on
samples of its training data; merging then reads it tensor by tensor, so memory stays bounded
(the official code holds every model in RAM at once). The method owns its statistic
(:attr:`MergeMethod.statistic` and :meth:`MergeMethod.compute_statistic`, next to its merge
formula); this module owns what every statistic shares: checking, reading and fingerprinting the
samples, encoding one for a model, the cache key, and the cached loop over experts. Each
statistic is an artifact of stage ``statistics`` keyed by (expert key, statistic name + version,
the hyperparameters that shape it, the fingerprint of the samples, the base's key if it depends
on the base), stored as safetensors named like the weights it belongs to.

A sample is ``{"prompt": str, "completion": str}`` (what :meth:`Recipe.samples` returns and what
``mergebench merge --samples DOMAIN=FILE.jsonl`` reads); it is rendered with the expert's chat
template when it has one and the loss covers the completion tokens only.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from mergebench import progress
from mergebench.cache import ArtifactCache, ArtifactKey, canonical_json
from mergebench.cache.integrity import verify_if_artifact
from mergebench.checkpoint.identity import checkpoint_identity
from mergebench.errors import CheckpointError, UsageError
from mergebench.merging.api import task_vector_filter

if TYPE_CHECKING:
    import torch

    from mergebench.merging.api import MergeMethod
    from mergebench.specs import MethodSpec

MAX_TOKENS = 256


# -- samples -------------------------------------------------------------------------------
def check_samples(samples: Sequence[Mapping[str, Any]], where: str) -> list[dict[str, str]]:
    """Validate ``[{"prompt", "completion"}, ...]``; a clear error names ``where`` they came from."""
    checked = []
    for i, sample in enumerate(samples):
        if not isinstance(sample, Mapping) or not isinstance(sample.get("prompt"), str) \
                or not isinstance(sample.get("completion"), str) or not sample["completion"]:
            raise UsageError(f"sample {i} of {where} must be an object with string 'prompt' and non-empty "
                             f"'completion', got {str(sample)[:120]!r}")
        checked.append({"prompt": sample["prompt"], "completion": sample["completion"]})
    if not checked:
        raise UsageError(f"{where} has no samples; data-aware methods need training samples of each expert")
    return checked


def read_jsonl(path: Path) -> list[dict[str, str]]:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"samples file {path} does not exist")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError as exc:
                raise UsageError(f"{path}:{number} is not JSON ({exc})") from None
    return check_samples(rows, str(path))


def fingerprint(samples: Sequence[Mapping[str, str]]) -> str:
    return hashlib.sha256(canonical_json(list(samples)).encode()).hexdigest()


def encode(tokenizer, sample: Mapping[str, str]) -> tuple["torch.Tensor", "torch.Tensor"]:
    """(input_ids, labels) of one sample, labels -100 on the prompt; at most :data:`MAX_TOKENS`."""
    import torch

    if getattr(tokenizer, "chat_template", None):
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": sample["prompt"]}],
                                               add_generation_prompt=True, tokenize=False)
    else:
        prompt = sample["prompt"]
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(sample["completion"], add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        completion_ids = completion_ids + [tokenizer.eos_token_id]
    ids = (prompt_ids + completion_ids)[:MAX_TOKENS]
    labels = ([-100] * len(prompt_ids) + completion_ids)[:MAX_TOKENS]
    if all(label == -100 for label in labels):  # a prompt longer than the window: keep the completion
        ids = (prompt_ids[-(MAX_TOKENS // 2):] + completion_ids)[:MAX_TOKENS]
        labels = ([-100] * min(len(prompt_ids), MAX_TOKENS // 2) + completion_ids)[:MAX_TOKENS]
    return torch.tensor([ids]), torch.tensor([labels])


# -- what a method's compute_statistic gets, and helpers it may use -------------------------
@dataclass(frozen=True)
class StatisticJob:
    """One expert's statistic to compute (:meth:`MergeMethod.compute_statistic`)."""

    base_dir: Path
    expert_dir: Path
    samples: Sequence[Mapping[str, str]]  # checked, at most the method's ``samples`` of them
    params: Mapping[str, Any]  # the hyperparameters named by the method's ``statistic_keys``
    merged: Callable[[str], bool]  # whether a tensor name is merged (the others need no statistic)
    device: str = "cpu"


def load_model(model_dir: Path, device: str):
    """(model, tokenizer) of a checkpoint in float32, in eval mode: statistics of the model as it is, no dropout.

    Loaded by evaluation's checked loader: safetensors only, their headers and sizes checked first
    (a truncated shard is one line naming it), no remote code. Pickles are never read here, even
    where a merge was given ``--allow-pickle``: unpickling runs code, and a statistic has no
    reason to take that risk (convert the checkpoint once instead).
    """
    from mergebench.checkpoint.reader import INDEX_FILE
    from mergebench.evaluation.hf import load_model as load_checked

    model_dir = Path(model_dir)
    if not (model_dir / INDEX_FILE).is_file() and not any(model_dir.glob("*.safetensors")):
        pickles = sorted(model_dir.glob("pytorch_model*.bin"))
        found = f"has only pickle weights ({pickles[0].name})" if pickles else "has no safetensors weights"
        raise CheckpointError(f"{model_dir} {found}; the statistics of data-aware methods load safetensors only, also "
                              "with --allow-pickle: convert it (load it and save_pretrained with safe_serialization=True)")
    return load_checked(model_dir, device, dtype="float32")


def save_statistic(tensors: Mapping[str, "torch.Tensor"], out_dir: Path, kind: str) -> None:
    """Write a statistic as (sharded) safetensors; their metadata name the statistic."""
    from mergebench.checkpoint import ShardedWriter

    writer = ShardedWriter(out_dir, metadata={"mergebench_statistic": kind})
    for name, tensor in tensors.items():
        writer.add(name, tensor)
    writer.close()


# -- cached per expert ---------------------------------------------------------------------
def statistics_key(method: type["MergeMethod"], expert_key: str, params: Mapping[str, Any], samples_fingerprint: str,
                   exclude: Sequence[str], base_key: str = "") -> ArtifactKey:
    """The identity of one expert's statistic; ``base_key`` counts only for statistics relative to the base (L&S masks)."""
    return ArtifactKey.of("statistics", {
        "kind": method.statistic, "version": method.statistic_version, "expert": expert_key, "params": dict(params),
        **({"base": base_key} if method.statistic_relative_to_base else {}),
        "samples": samples_fingerprint, "exclude": list(exclude), "max_tokens": MAX_TOKENS,
    })


def ensure_statistics(
    cache: ArtifactCache,
    method: type["MergeMethod"],
    params: Mapping[str, Any],
    base_dir: Path,
    experts: Mapping[str, tuple[str, Path]],
    samples: Mapping[str, Sequence[Mapping[str, str]]],
    *,
    merged: Callable[[str], bool],
    exclude: Sequence[str],
    device: str = "cpu",
    base_key: str = "",
) -> dict[str, Path]:
    """The statistics folder of every expert (label → (key digest, checkpoint dir)), built by the method if missing."""
    kind = method.statistic
    if not kind:
        raise UsageError(f"method {method.__name__} declares no statistic")
    missing = [label for label in experts if label not in samples]
    if missing:
        raise UsageError(
            f"no training samples for expert(s) {', '.join(missing)}: this method computes {kind} statistics "
            "from samples of each expert's training data; pass --samples DOMAIN=FILE.jsonl (lines of "
            '{"prompt": ..., "completion": ...}) for every --expert'
        )
    found = {}
    for label, (expert_key, expert_dir) in experts.items():
        rows = check_samples(samples[label], f"the samples of expert {label!r}")
        key = statistics_key(method, expert_key, params, fingerprint(rows), exclude,
                             base_key or checkpoint_identity(Path(base_dir)))
        job = StatisticJob(Path(base_dir), Path(expert_dir), rows, dict(params), merged, device)
        artifact = cache.get_or_build(key, lambda out, job=job: _compute(method, job, out), label=f"{kind} statistics of {label}")
        if not artifact.hit:
            progress.note(f"  [built] {kind} statistics of {label} in {artifact.seconds:.1f}s")
        found[label] = artifact.path
    return found


def _compute(method: type["MergeMethod"], job: StatisticJob, out: Path) -> None:
    """The method's statistic of one expert, its cached inputs checked against their manifests first."""
    verify_if_artifact(job.base_dir)
    verify_if_artifact(job.expert_dir)
    method.compute_statistic(job, out)


def statistics_for(
    spec: "MethodSpec",
    params: Mapping[str, Any],
    cache: ArtifactCache,
    base: tuple[str, Path],
    experts: Mapping[str, tuple[str, Path]],
    samples_of: Callable[[str, int], Sequence[Mapping[str, str]] | None],
    *,
    exclude: Sequence[str],
    device: str = "cpu",
) -> dict[str, Path]:
    """Each expert's statistic for ``spec``'s method (none for a data-free method), built where missing.

    The one entry point of the pipeline and the CLI, which differ only in where samples come from:
    ``samples_of(label, n)`` gives up to ``n`` samples of that expert's training data, or None when
    it has none. ``params`` are the resolved hyperparameters; ``n`` is the method's ``samples``
    hyperparameter, so its default is declared once, in the method's spec. ``base`` and ``experts``
    are (key, checkpoint dir) pairs.
    """
    method = spec.load()
    if not method.statistic:
        return {}
    if "samples" not in params:
        raise UsageError(
            f"method {spec.name!r} computes {method.statistic} statistics from training samples but its spec declares "
            "no 'samples' hyperparameter saying how many per expert; add HyperParam('samples', ...) to it"
        )
    count = int(params["samples"])
    gathered = {label: samples_of(label, count) for label in experts}
    return ensure_statistics(
        cache, method, method.statistic_params(params), base[1], experts,
        {label: rows for label, rows in gathered.items() if rows is not None},
        merged=task_vector_filter(exclude), exclude=exclude, device=device, base_key=base[0],
    )
