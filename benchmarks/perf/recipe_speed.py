"""Training speed of one mini expert under its settings' levers, A/B in child processes.

    python benchmarks/perf/recipe_speed.py [--domain math] [--steps 16] [--rounds 1] [--native]

Each configuration trains the embedded SmolLM2-135M-Instruct on the real ``mini-<domain>``
examples with ``run_sft`` (the recipe's own settings, one lever changed at a time), in a child
process started under the AVX2 emulation of the cold-run target (``--native`` drops it), the
configurations interleaved round by round. It prints, for each, the seconds from the first to the
last optimizer step (wall and the child's CPU time, which load from other jobs inflates less),
the positions computed (padded batches) and real tokens, and the ratio to the first
configuration measured in the same round, with the CPU model and the load average.

Configurations: ``before`` (random batches, embeddings trained: the recipes until 2026-12),
``length batches`` (batches of similar length), ``length batches + frozen embeddings``, measured
but not adopted the same with the lower half of the decoder layers frozen too (task vectors would
then be zero there, unlike the study's fully finetuned experts), and today's mini recipes: the
same without trl's default activation checkpointing (each layer's forward pass is no longer run
twice). The first four recompute activations, as trl does by default. ``--only 3,5`` compares two
configurations; ratios are to the first configuration run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from isa_emulation import EMULATION, cpu_model  # noqa: E402

_RECOMPUTE = {"activation_checkpointing": True}
CONFIGS = {
    "before": {"length_batches": False, "freeze_embeddings": False, **_RECOMPUTE},
    "length batches": {"length_batches": True, "freeze_embeddings": False, **_RECOMPUTE},
    "length batches + frozen embeddings": {"length_batches": True, "freeze_embeddings": True, **_RECOMPUTE},
    "the same + lower half of the layers frozen (not adopted)": {"length_batches": True, "freeze_embeddings": True,
                                                                 **_RECOMPUTE},
    "length batches + frozen embeddings + activations kept (today's mini recipes)": {
        "length_batches": True, "freeze_embeddings": True, "activation_checkpointing": False},
}
FROZEN_LAYERS = {"the same + lower half of the layers frozen (not adopted)": 0.5}
"""Configurations that also freeze this fraction of the decoder layers, from the bottom (backward stops above them)."""


def child(domain: str, config: str, steps: int) -> dict:
    from transformers import TrainerCallback

    from mergebench import plugin_manager
    from mergebench.cache import ArtifactCache
    from mergebench.finetune.sft import run_sft
    from mergebench.pipeline import Pipeline, RunContext

    registries = plugin_manager.registries()
    pipeline = Pipeline(RunContext(cache=ArtifactCache()), registries)
    base = pipeline.base(registries.models.get("smollm2-135m-instruct")).path
    spec = registries.recipes.get(f"mini-{domain}")
    recipe = spec.load()(spec, pipeline.context)
    settings = dataclasses.replace(recipe.settings, max_steps=steps, save_steps=10_000, **CONFIGS[config])
    marks: list[tuple[float, float]] = []
    rows: list[list[int]] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            layers = model.model.layers
            for layer in layers[: int(len(layers) * FROZEN_LAYERS.get(config, 0.0))]:
                layer.requires_grad_(False)  # no gradient: AdamW skips them, backward stops above them
            marks.append((time.perf_counter(), time.process_time()))

            def hook(module, _args, inputs):
                if module.training and inputs.get("attention_mask") is not None:
                    rows.append(inputs["attention_mask"].sum(dim=1).tolist())
            model.model.register_forward_pre_hook(hook, with_kwargs=True)

        def on_step_end(self, args, state, control, **kwargs):
            marks.append((time.perf_counter(), time.process_time()))

    with tempfile.TemporaryDirectory() as tmp:
        run_sft(base, recipe.trained_examples(), Path(tmp) / "out", settings, seed=0, work_dir=Path(tmp) / "work",
                description=f"speed {domain}", callbacks=[Clock()])
    return {"wall": marks[-1][0] - marks[0][0], "cpu": marks[-1][1] - marks[0][1], "steps": len(marks) - 1,
            "positions": sum(len(r) * max(r) for r in rows), "tokens": sum(map(sum, rows))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domain", default="math")
    parser.add_argument("--steps", type=int, default=16, help="optimizer steps (16 is a whole mini expert)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--only", default="", help="comma-separated configuration numbers (default: all)")
    parser.add_argument("--native", action="store_true", help="no AVX2 emulation")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.domain, args.child, args.steps)))
        return

    configs = list(CONFIGS)
    if args.only:
        keep = {int(i) for i in args.only.split(",")}
        configs = [c for i, c in enumerate(configs, 1) if i in keep]
    isa = "native" if args.native else "AVX2 emulation (" + " ".join(f"{k}={v}" for k, v in EMULATION.items()) + ")"
    print(f"CPU: {cpu_model()}; {isa}; mini-{args.domain}, {args.steps} steps; load average {os.getloadavg()[0]:.1f}",
          flush=True)
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", **({} if args.native else EMULATION)}
    results: dict[str, list[dict]] = {c: [] for c in configs}
    for round_ in range(args.rounds):
        for config in configs:
            out = subprocess.run([sys.executable, __file__, "--child", config, "--domain", args.domain,
                                  "--steps", str(args.steps)], env=env, capture_output=True, text=True)
            if out.returncode:
                sys.exit(f"{config} failed:\n{out.stderr[-3000:]}")
            found = json.loads(out.stdout.strip().splitlines()[-1])
            results[config].append(found)
            print(f"  round {round_ + 1}, {config}: {found['wall']:.1f} s wall, {found['cpu']:.1f} s cpu, "
                  f"{found['steps']} steps, {found['positions']} positions ({found['tokens']} tokens); "
                  f"load {os.getloadavg()[0]:.1f}", flush=True)
    first = configs[0]
    print(f"\n| configuration | wall s | cpu s | positions computed | × {first} (cpu, per round) |\n|---|---|---|---|---|")
    for config in configs:
        runs = results[config]
        ratios = [results[first][i]["cpu"] / r["cpu"] for i, r in enumerate(runs)]
        walls = ", ".join(f"{r['wall']:.1f}" for r in runs)
        cpus = ", ".join(f"{r['cpu']:.1f}" for r in runs)
        print(f"| {config} | {walls} | {cpus} | {runs[0]['positions']} | {', '.join(f'{x:.2f}' for x in ratios)} |")
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
