"""How far a decode step's products are from this CPU's floors: the evidence for generation's ceiling.

    python benchmarks/perf/decode_floors.py [--rows 16] [--threads 1] [--repeats 5] [--steps 128]
                                            [--generation OURS LM_EVAL]

Why: issue 18 asks generation to run at 2x lm-eval's ``hf`` backend at equal batch with outputs
identical to greedy ``generate``. Exact float32 decoding must multiply every row by every weight at
every step, so a step cannot beat the larger of two floors: the multiply-adds at the CPU's rate, and
reading the weights from memory. This script measures both in one process, on the weights arranged
exactly as generation arranges them (:func:`mergebench.evaluation.llama_step.arranged_weights`:
concatenated, packed for the batch's rows, or numpy's BLAS where that is the choice):

- streamed: one decode step's products in the step's order, each weight read once (what a step pays);
- compute floor: each product repeated back to back, so its weight is in cache, fastest call, summed;
- read floor: a sum over a float32 buffer as large as the step's weights (one stream per thread).

With ``--generation OURS LM_EVAL`` (seconds that ``eval_speed.py`` printed on this machine, same
thread count and emulation) it prints the best ratio to lm-eval this engine could reach if every
step's products ran at the larger floor and nothing else changed. Set the AVX2 emulation
(``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2
OPENBLAS_CORETYPE=Haswell``; the last for numpy's OpenBLAS, which multiplies on non-Intel CPUs) before
Python starts for the slower kind of CPU. The base model comes from the artifact cache (built if missing).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from isa_emulation import cpu_model, dispatch  # noqa: E402


def fastest(run, repeats: int) -> float:
    """Seconds of the fastest of ``repeats`` calls, after one untimed call."""
    run()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None, help="checkpoint folder (default: the embedded base)")
    parser.add_argument("--rows", type=int, default=16, help="the batch's rows (eval_speed.py's --batch-size)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=128, help="decode steps of the generation (--max-new-tokens)")
    parser.add_argument("--generation", type=float, nargs=2, metavar=("OURS", "LM_EVAL"), default=None,
                        help="seconds eval_speed.py printed for this engine and for lm-eval hf at the same batch")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from mergebench import plugin_manager
    from mergebench.cache import ArtifactCache
    from mergebench.evaluation import llama_step
    from mergebench.evaluation.hf import HFLanguageModel
    from mergebench.pipeline import Pipeline, RunContext

    registries = plugin_manager.registries()
    context = RunContext(cache=ArtifactCache())
    path = args.model or Pipeline(context, registries).base(registries.models.get("smollm2-135m-instruct")).path
    model = HFLanguageModel.from_pretrained(path, batch_size=args.rows).model
    if not llama_step.supports(model):
        raise SystemExit(f"{path}: not a plain Llama model, so generation does not arrange its weights; nothing to time")
    weights = llama_step.arranged_weights(model, args.rows)
    matrices = [m for layer in weights.layers for m in (layer.qkv, layer.o, layer.gate_up, layer.down)]
    matrices.append(weights.lm_head)
    nbytes = sum(m.weight.numel() * m.weight.element_size() for m in matrices)
    inputs = {m.weight.shape[1]: torch.randn(args.rows, m.weight.shape[1], dtype=m.weight.dtype) for m in matrices}
    packed = sum(m.packed is not None or m.transposed is not None for m in matrices)
    print(f"CPU {cpu_model()}, {dispatch()}, "
          f"{torch.get_num_threads()} thread(s), products through {weights.library} ({packed} of {len(matrices)} "
          f"matrices arranged for {args.rows} rows), load average {os.getloadavg()[0]:.1f}", flush=True)

    def step() -> None:
        for matrix in matrices:
            matrix(inputs[matrix.weight.shape[1]])

    streamed = fastest(step, args.repeats)
    compute = sum(fastest(lambda m=m: m(inputs[m.weight.shape[1]]), args.repeats) for m in matrices)
    buffer = torch.ones(nbytes // 4, dtype=torch.float32)
    read = fastest(buffer.sum, args.repeats)
    del buffer
    floor = max(compute, read)
    print(f"one decode step's products, streamed: {streamed * 1e3:.1f} ms ({nbytes / 1e6:.0f} MB of weights)")
    print(f"compute floor (each product with its weight in cache): {compute * 1e3:.1f} ms; "
          f"streamed is {streamed / compute:.2f}x it")
    print(f"read floor ({nbytes / 1e6:.0f} MB at {nbytes / read / 1e9:.1f} GB/s): {read * 1e3:.1f} ms; "
          f"streamed is {streamed / read:.2f}x it")
    per_step = max(streamed - floor, 0.0)
    saved = per_step * args.steps
    print(f"products at the larger floor would save at most {per_step * 1e3:.1f} ms a step, "
          f"{saved:.1f} s over {args.steps} steps")
    if args.generation:
        ours, theirs = args.generation
        print(f"generation: this engine {ours:.1f} s, lm-eval {theirs:.1f} s ({theirs / ours:.2f}x); with every "
              f"step's products at the floor and the rest unchanged: {ours - saved:.1f} s, "
              f"{theirs / (ours - saved):.2f}x at most")


if __name__ == "__main__":
    main()
