"""How far each method's study-code form is from its paper form, on tiny Llama models (docs/fidelity.md).

Builds a random 2-layer Llama (untied lm_head, as Llama-3.1-8B) and five experts whose task vectors
are seeded Gaussian noise on every tensor, merges them with every built-in method in both semantics
and with each study-code difference alone, and prints per row: the largest |paper − study| as a
share of the largest |τ| of any expert, and the share of merged entries that differ (> 1e-6 of it).
``--bf16`` stores every weight in bfloat16 first, as the study's checkpoints are (exact ties appear).

    python benchmarks/fidelity/study_code_diff.py            # float32 weights
    python benchmarks/fidelity/study_code_diff.py --bf16     # bfloat16-valued weights
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch

from mergebench import plugin_manager
from mergebench.cache import ArtifactCache
from mergebench.checkpoint import CheckpointReader
from mergebench.merging.api import DEFAULT_EXCLUDE, MergeContext, task_vector_filter
from mergebench.merging.engine import merge_checkpoints
from mergebench.merging.statistics import ensure_statistics
from mergebench_builtins.models import tiny

DOMAINS = ("instruction", "math", "coding", "safety", "multilingual")
SAMPLES = [{"prompt": f"Question {i}: what is {i} + {i}?", "completion": f"The answer is {2 * i}."} for i in range(8)]
ROWS = [  # (label, method, paper overrides, study overrides); None: the method's whole study-code form
    ("TIES: whole form", "ties", {}, None),
    ("TIES: sum instead of mean", "ties", {}, {"merge_func": "sum"}),
    ("TIES: ⌊dK⌋+1 kept", "ties", {}, {"topk": "floor_plus_one"}),
    ("TIES: majority sign at zero sums", "ties", {}, {"zero_sign": "majority"}),
    ("TIES: lm_head in the threshold", "ties", {}, {"lm_head_in_threshold": True}),
    ("Consensus: whole form (λ_c 0.2, >) vs λ_c 0.5, ≥", "consensus", {}, None),
    ("Consensus: > vs ≥ at λ_c 0.2", "consensus", {"mask_lambda": 0.2}, {"mask_lambda": 0.2, "mask_compare": "gt"}),
    ("Soup: embeddings and head at the base", "soup", {}, None),
    ("Dataless L&S: whole form", "dataless_localize_stitch", {}, None),
    ("Dataless L&S: drifting base alone", "dataless_localize_stitch", {}, {"drifting_base": True}),
    ("Dataless L&S: last-overlap count alone", "dataless_localize_stitch", {}, {"overlap": "last"}),
    ("Task Arithmetic", "task_arithmetic", {}, None),
    ("DARE (same seed)", "dare", {}, None),
    ("Fisher: last-token argmax statistic, group 4, +1e-10", "fisher", {"samples": 8}, None),
    ("RegMean: the study's inverse/pinv solver", "regmean", {"samples": 8}, None),
]


def build(root: Path, bf16: bool) -> tuple[Path, dict[str, Path]]:
    from safetensors.torch import save_file

    base_dir = root / "base"
    base_dir.mkdir(parents=True)
    tiny.build_llama(base_dir, SimpleNamespace(seed=0))
    reader = CheckpointReader(base_dir)
    base = {n: reader.get(n) for n in reader.names()}
    if bf16:
        base = {n: t.to(torch.bfloat16) for n, t in base.items()}
        save_file({k: v.contiguous() for k, v in base.items()}, str(base_dir / "model.safetensors"))
    experts = {}
    for i, domain in enumerate(DOMAINS):
        generator = torch.Generator().manual_seed(100 + i)
        tensors = {n: (t.float() + 0.05 * torch.randn(t.shape, generator=generator)).to(t.dtype) for n, t in base.items()}
        out = root / domain
        out.mkdir()
        for f in base_dir.iterdir():
            if f.suffix != ".safetensors":
                (out / f.name).write_bytes(f.read_bytes())
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "model.safetensors"))
        experts[domain] = out
    return base_dir, experts


def load(path: Path) -> dict[str, torch.Tensor]:
    reader = CheckpointReader(path)
    return {n: reader.get(n).float() for n in reader.names()}


def statistics(spec, params, base_dir, experts, cache) -> dict[str, Path]:
    method = spec.load()
    if not method.statistic:
        return {}
    return ensure_statistics(cache, method, method.statistic_params(params), base_dir,
                             {d: (d, p) for d, p in experts.items()}, {d: SAMPLES for d in experts},
                             merged=task_vector_filter(DEFAULT_EXCLUDE), exclude=DEFAULT_EXCLUDE)


def merge(spec, params, base_dir, experts, out, cache) -> dict[str, torch.Tensor]:
    found = statistics(spec, params, base_dir, experts, cache)
    merge_checkpoints(spec, params, base_dir, experts, out, context=MergeContext(statistics=found))
    return load(out)


def cpu_model() -> str:
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines()
        return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("Model name")), "unknown")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bf16", action="store_true", help="bfloat16-valued weights, as the study's checkpoints")
    args = parser.parse_args()
    registries = plugin_manager.registries()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        base_dir, experts = build(root, args.bf16)
        base = load(base_dir)
        scale = max(float((load(p)[n] - base[n]).abs().max()) for p in experts.values() for n in base)
        cache = ArtifactCache(root / "cache")
        print(f"tiny Llama (2 layers, untied lm_head), 5 experts of N(0, 0.05²) task vectors, "
              f"{'bfloat16' if args.bf16 else 'float32'} weights; CPU: {cpu_model()}")
        print(f"largest |τ| = {scale:.4f}; entries counted over every tensor (embeddings and head included)")
        print(f"| {'difference':<52} | max |paper − study| / max |τ| | entries that differ |")
        print(f"|{'-' * 54}|---|---|")
        for i, (label, name, paper, study) in enumerate(ROWS):
            spec = registries.methods.get(name)
            first = merge(spec, spec.resolve_params(paper), base_dir, experts, root / f"p{i}", cache)
            second_params = spec.resolve_params(paper, "study-code") if study is None else spec.resolve_params(study)
            second = merge(spec, second_params, base_dir, experts, root / f"s{i}", cache)
            diffs = [(first[n] - second[n]).abs() for n in first]
            largest = max(float(d.max()) for d in diffs)
            count = sum(int((d > 1e-6 * scale).sum()) for d in diffs)
            share = count / sum(d.numel() for d in diffs)
            print(f"| {label:<52} | {largest / scale:.2e} | {100 * share:.2f}% ({count}) |")


if __name__ == "__main__":
    main()
