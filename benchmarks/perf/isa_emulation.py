"""Does the AVX2 emulation slow this CPU down to an AVX2-only machine's rate? One training step, A/B.

    python benchmarks/perf/isa_emulation.py [--rounds 3] [--steps 2] [--threads 2]

Runs the same work in child processes, native and under the emulation
(``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2``, and numpy's and
OpenBLAS's own variables: ``EMULATION``), set before Python starts, interleaved round by round,
and prints each one's seconds and the ratio:

- a training step of the mini recipes' shape on the embedded SmolLM2-135M-Instruct: a batch of
  8 rows × 256 tokens, forward, completion-only loss over half the positions (as ``run_sft``
  computes it), backward, fused AdamW, its products in the BLAS finetuning uses on this CPU
  (numpy's OpenBLAS on non-Intel CPUs, ``packed_linear.numpy_linears``);
- 32 greedy decode steps of 16 rows (what a generative mini task does, over a KV cache).

An AVX2-only 2-core AMD EPYC took 14-29 s a step on the mini recipes (16 steps in 3.7-7.7 min),
so the emulated step should land near that, well above the native one on AVX-512/AMX.
The base model comes from the artifact cache (``MERGEBENCH_CACHE``; built first if missing).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

EMULATION = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
             # numpy's own dispatch too (the torch-free merge computes in numpy): its AVX-512 targets off
             "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",
             # and numpy's OpenBLAS, which multiplies the decode steps, log-likelihood forwards and finetuning
             # on non-Intel CPUs: it picks its kernels from cpuid, SkylakeX (AVX-512) on an AVX-512 AMD EPYC
             "OPENBLAS_CORETYPE": "Haswell"}

def dispatch_state() -> dict:
    """What this process computes with: torch's ISA, whether numpy dispatches to any AVX-512 target,
    and the kernel families of the OpenBLAS libraries loaded (numpy's, and scipy's where imported)."""
    import torch
    from numpy._core._multiarray_umath import __cpu_features__ as features
    from threadpoolctl import threadpool_info

    return {"capability": torch.backends.cpu.get_cpu_capability(),
            "numpy_avx512": any(features.get(k) for k in ("X86_V4", "AVX512_SKX", "AVX512_ICL", "AVX512_SPR")),
            "openblas": sorted({i.get("architecture") or "?" for i in threadpool_info() if i.get("internal_api") == "openblas"})}


def describe(state: dict) -> str:
    return (f"torch dispatches to {state['capability']}, "
            f"numpy's OpenBLAS to {', '.join(state['openblas']) or '(no OpenBLAS loaded)'}")


def dispatch() -> str:
    """This process's torch ISA and OpenBLAS kernels, as printed beside every figure."""
    return describe(dispatch_state())


def check_emulation(env: dict[str, str], python: str = sys.executable) -> str:
    """What a child started with ``env`` computes with; refuses to go on if any part of the emulation did not take.

    Each library reads its own variable, and a misspelt or unsupported one is silently ignored,
    so each is checked: torch's capability, numpy's AVX-512 targets, OpenBLAS's kernel family.
    """
    code = (f"import json, sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); "
            "import isa_emulation; print(json.dumps(isa_emulation.dispatch_state()))")
    out = subprocess.run([python, "-c", code], env=env, capture_output=True, text=True, check=True)
    state = json.loads(out.stdout.splitlines()[-1])
    if env.get("ATEN_CPU_CAPABILITY") and state["capability"].lower() != env["ATEN_CPU_CAPABILITY"].lower():
        raise SystemExit(f"ATEN_CPU_CAPABILITY={env['ATEN_CPU_CAPABILITY']} did not take effect: torch dispatches to "
                         f"{state['capability']}")
    if env.get("NPY_DISABLE_CPU_FEATURES") and state["numpy_avx512"]:
        raise SystemExit(f"NPY_DISABLE_CPU_FEATURES={env['NPY_DISABLE_CPU_FEATURES']} did not keep numpy's dispatch "
                         "off its AVX-512 targets")
    wanted = env.get("OPENBLAS_CORETYPE")
    if wanted and any(core.lower() != wanted.lower() for core in state["openblas"]):
        raise SystemExit(f"OPENBLAS_CORETYPE={wanted} did not take effect: numpy's OpenBLAS runs "
                         f"{', '.join(state['openblas'])} kernels")
    return describe(state)


def cpu_model() -> str:
    """The ``Model name`` line of ``lscpu`` (the figure's machine), with the core count."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown CPU (lscpu unavailable)"
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    name = fields.get("Model name", "unknown").strip()
    return f"{name}, {os.cpu_count()} CPUs"


def child(steps: int, threads: int) -> dict:
    """Time one warm-up step then ``steps`` training steps and a 32-step decode; returns seconds."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from mergebench import plugin_manager
    from mergebench.cache import ArtifactCache
    from mergebench.evaluation import packed_linear
    from mergebench.pipeline import Pipeline, RunContext

    torch.set_num_threads(threads)
    registries = plugin_manager.registries()
    base = Pipeline(RunContext(cache=ArtifactCache()), registries).base(registries.models.get("smollm2-135m-instruct"))
    model = AutoModelForCausalLM.from_pretrained(str(base.path), dtype=torch.float32, use_safetensors=True)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(100, 40_000, (8, 256), generator=generator)
    labels = ids.clone()
    labels[:, :128] = -100
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)

    def train_step() -> None:
        hidden = model.model(input_ids=ids, use_cache=False).last_hidden_state
        targets = labels[:, 1:]
        mask = targets != -100
        loss = F.cross_entropy(model.lm_head(hidden[:, :-1][mask]), targets[mask])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    model.train()
    with packed_linear.numpy_linears(model):  # as run_sft multiplies
        train_step()
        started, cpu_started = time.perf_counter(), time.process_time()
        for _ in range(steps):
            train_step()
        step, step_cpu = (time.perf_counter() - started) / steps, (time.process_time() - cpu_started) / steps
    model.eval()
    prompt = torch.randint(100, 40_000, (16, 64), generator=generator)
    with torch.no_grad():
        model.generate(prompt, max_new_tokens=4, do_sample=False)
        started = time.perf_counter()
        model.generate(prompt, max_new_tokens=32, min_new_tokens=32, do_sample=False)
        decode = time.perf_counter() - started
    return {"capability": dispatch(), "train_step": step, "train_step_cpu": step_cpu,
            "decode_32": decode}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2, help="timed training steps per run (after one warm-up step)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.steps, args.threads)))
        return

    print(f"CPU: {cpu_model()}; load average at start {os.getloadavg()[0]:.1f}", flush=True)
    variants = {"native": {}, "AVX2 emulation": EMULATION}
    results: dict[str, list[dict]] = {name: [] for name in variants}
    for round_ in range(args.rounds):
        for name, extra in variants.items():
            env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", **extra}
            for key in EMULATION:
                if key not in extra:
                    env.pop(key, None)
            out = subprocess.run([sys.executable, __file__, "--child", "--steps", str(args.steps), "--threads", str(args.threads)],
                                 env=env, capture_output=True, text=True)
            if out.returncode:
                sys.exit(f"{name} child failed:\n{out.stderr[-2000:]}")
            found = json.loads(out.stdout.strip().splitlines()[-1])
            results[name].append(found)
            print(f"  round {round_ + 1}, {name} ({found['capability']}): training step {found['train_step']:.2f} s "
                  f"({found['train_step_cpu']:.2f} s cpu), "
                  f"32 decode steps × 16 rows {found['decode_32']:.2f} s (load {os.getloadavg()[0]:.1f})", flush=True)
    print(f"\n{args.threads} threads, fastest of {args.rounds} rounds (all rounds in brackets):")
    columns = ("train_step", "train_step_cpu", "decode_32")
    print("| | training step, 8 × 256 tokens (s) | the same, CPU s | 32 decode steps × 16 rows (s) |\n|---|---|---|---|")
    best = {}
    for name, runs in results.items():
        best[name] = {k: min(r[k] for r in runs) for k in columns}
        cells = [f"{best[name][k]:.2f} ({', '.join(f'{r[k]:.2f}' for r in runs)})" for k in columns]
        print(f"| {name} | {' | '.join(cells)} |")
    ratio = {k: best["AVX2 emulation"][k] / best["native"][k] for k in columns}
    print(f"| emulation / native | {' | '.join(f'{ratio[k]:.2f}×' for k in columns)} |")
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
