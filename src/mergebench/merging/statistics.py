"""Per-expert statistics of the data-aware methods, computed once and cached as artifacts.

Fisher Merging, RegMean and Localize-and-Stitch need something computed from each expert on
samples of its training data; merging then reads it tensor by tensor, so memory stays bounded
(the official code holds every model in RAM at once). Each statistic is an artifact of stage
``statistics`` keyed by (expert key, statistic kind + version, the hyperparameters that shape it,
the fingerprint of the samples), stored as safetensors named like the weights it belongs to:

* ``fisher``  — diagonal empirical Fisher: mean over samples of the squared gradient of the
  sample's completion loss (one backward pass per sample), for every merged parameter.
* ``gram``    — RegMean's Gram matrix XᵀX of the inputs of every merged ``nn.Linear`` (keyed by
  its weight's name), averaged over the tokens seen, from forward hooks.
* ``ls_mask`` — Localize-and-Stitch's trained binary mask (uint8) for every merged parameter.

A sample is ``{"prompt": str, "completion": str}`` (what :meth:`Recipe.samples` returns and what
``mergebench merge --samples DOMAIN=FILE.jsonl`` reads); it is rendered with the expert's chat
template when it has one and the loss covers the completion tokens only.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from mergebench import progress
from mergebench.cache import ArtifactCache, ArtifactKey, canonical_json
from mergebench.errors import UsageError

if TYPE_CHECKING:
    import torch

MAX_TOKENS = 256
VERSIONS = {"fisher": "1", "gram": "1", "ls_mask": "1"}


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


# -- the statistics ------------------------------------------------------------------------
def _load(model_dir: Path, device: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device)
    model.eval()  # no dropout: statistics of the model as it is
    return model, AutoTokenizer.from_pretrained(model_dir)


def _save(tensors: Mapping[str, "torch.Tensor"], out_dir: Path, kind: str) -> None:
    from mergebench.checkpoint import ShardedWriter

    writer = ShardedWriter(out_dir, metadata={"mergebench_statistic": kind})
    for name, tensor in tensors.items():
        writer.add(name, tensor)
    writer.close()


def compute_fisher(base_dir: Path, expert_dir: Path, samples, params, merged: Callable[[str], bool],
                   device: str, out_dir: Path) -> None:
    import torch

    model, tokenizer = _load(expert_dir, device)
    wanted = {n: p for n, p in model.named_parameters() if merged(n)}
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in wanted)
    fisher = {n: torch.zeros_like(p) for n, p in wanted.items()}
    with progress.progress("fisher", total=len(samples), unit="samples") as bar:
        for sample in samples:
            ids, labels = encode(tokenizer, sample)
            model.zero_grad(set_to_none=True)
            model(input_ids=ids.to(device), labels=labels.to(device)).loss.backward()
            for name, parameter in wanted.items():
                if parameter.grad is not None:
                    fisher[name].addcmul_(parameter.grad, parameter.grad)
            bar.advance()
    _save({n: f / len(samples) for n, f in fisher.items()}, out_dir, "fisher")


def compute_gram(base_dir: Path, expert_dir: Path, samples, params, merged: Callable[[str], bool],
                 device: str, out_dir: Path) -> None:
    import torch

    model, tokenizer = _load(expert_dir, device)
    grams: dict[str, torch.Tensor] = {}
    tokens: dict[str, int] = {}
    handles = []
    for module_name, module in model.named_modules():
        weight_name = f"{module_name}.weight"
        if isinstance(module, torch.nn.Linear) and merged(weight_name):
            def hook(_module, inputs, _output, key=weight_name):
                x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).float()
                grams[key] = grams[key].addmm_(x.T, x) if key in grams else x.T @ x
                tokens[key] = tokens.get(key, 0) + x.shape[0]
            handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad(), progress.progress("gram", total=len(samples), unit="samples") as bar:
            for sample in samples:
                ids, _ = encode(tokenizer, sample)
                model(input_ids=ids.to(device))
                bar.advance()
    finally:
        for handle in handles:
            handle.remove()
    _save({n: g / tokens[n] for n, g in grams.items()}, out_dir, "gram")


def train_ls_mask(base_dir: Path, expert_dir: Path, samples, params, merged: Callable[[str], bool],
                  device: str, out_dir: Path) -> None:
    """Localize-and-Stitch's localization (He et al. 2025, Algorithm 1), on the CPU or GPU.

    Mask logits S start at ±``sigmoid_bias`` on the top ``density`` entries of |τ| (over the whole
    model); the model θ_pre + σ(S) ⊙ τ is trained on the samples for ``epochs`` by SGD on S with
    learning rate ``lr`` and an L1 penalty ``l1`` on σ(S); the mask is σ(S) > 1/2.
    """
    import torch

    from mergebench.checkpoint import CheckpointReader
    from mergebench.merging.topk import MagnitudeSelector, topk_count

    model, tokenizer = _load(base_dir, device)
    expert = CheckpointReader(expert_dir)
    wanted = {n: p for n, p in model.named_parameters() if merged(n)}
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in wanted)
    pre = {n: p.detach().clone() for n, p in wanted.items()}
    tau = {n: expert.get(n).to(device, torch.float32) - pre[n] for n in wanted}
    selector = MagnitudeSelector([topk_count(sum(t.numel() for t in tau.values()), params["density"])])
    for t in tau.values():
        selector.add(t)
    for t in tau.values():
        selector.refine(t)
    threshold = selector.thresholds()[0]
    bias = params["sigmoid_bias"]
    logits = {n: torch.where(t.abs() >= threshold, bias, -bias).to(torch.float32) for n, t in tau.items()}
    steps = params["epochs"] * len(samples)
    with progress.progress("localize", total=steps, unit="steps") as bar:
        for _ in range(params["epochs"]):
            for sample in samples:
                with torch.no_grad():
                    for n, parameter in wanted.items():
                        parameter.copy_(pre[n] + torch.sigmoid(logits[n]) * tau[n])
                ids, labels = encode(tokenizer, sample)
                model.zero_grad(set_to_none=True)
                model(input_ids=ids.to(device), labels=labels.to(device)).loss.backward()
                with torch.no_grad():
                    for n, parameter in wanted.items():
                        sig = torch.sigmoid(logits[n])
                        slope = sig * (1 - sig)
                        grad = slope * params["l1"]
                        if parameter.grad is not None:
                            grad = grad + parameter.grad * tau[n] * slope
                        logits[n] -= params["lr"] * grad
                bar.advance()
    _save({n: (s > 0).to(torch.uint8) for n, s in logits.items()}, out_dir, "ls_mask")


BUILDERS = {"fisher": compute_fisher, "gram": compute_gram, "ls_mask": train_ls_mask}
RELATIVE_TO_BASE = {"ls_mask"}  # trained on θ_pre + σ(S) ⊙ τ: depends on the base too


# -- cached per expert ---------------------------------------------------------------------
def checkpoint_identity(directory: Path) -> str:
    """Identity of a local checkpoint for statistics keys: its config and each weight file's
    resolved path, size and modification time (hashing gigabytes of weights would cost more than
    the statistic; a rewritten file gets a new key)."""
    digest = hashlib.sha256()
    directory = Path(directory).resolve()
    config = directory / "config.json"
    if config.is_file():
        digest.update(config.read_bytes())
    for weight in sorted(directory.glob("*.safetensors")):
        stat = weight.stat()
        digest.update(f"{weight}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def statistics_key(kind: str, expert_key: str, params: Mapping[str, Any], samples_fingerprint: str,
                   exclude: Sequence[str], base_key: str = "") -> ArtifactKey:
    """The identity of one expert's statistic; ``base_key`` only for statistics relative to the base (L&S masks)."""
    return ArtifactKey.of("statistics", {
        "kind": kind, "version": VERSIONS[kind], "expert": expert_key, "params": dict(params),
        **({"base": base_key} if kind in RELATIVE_TO_BASE else {}),
        "samples": samples_fingerprint, "exclude": list(exclude), "max_tokens": MAX_TOKENS,
    })


def ensure_statistics(
    cache: ArtifactCache,
    kind: str,
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
    """The statistics folder of every expert (label → (key digest, checkpoint dir)), built if missing."""
    if kind not in BUILDERS:
        raise UsageError(f"unknown statistic {kind!r}; known: {', '.join(BUILDERS)}")
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
        key = statistics_key(kind, expert_key, params, fingerprint(rows), exclude,
                             base_key or checkpoint_identity(Path(base_dir)))
        builder = BUILDERS[kind]
        artifact = cache.get_or_build(
            key, lambda out, d=expert_dir, r=rows, build=builder: build(Path(base_dir), Path(d), r, params, merged, device, out),
            label=f"{kind} statistics of {label}",
        )
        if not artifact.hit:
            progress.note(f"  [built] {kind} statistics of {label} in {artifact.seconds:.1f}s")
        found[label] = artifact.path
    return found
