"""Our engine against lm-eval's stock ``hf`` backend, same model, items and settings, one run.

    python benchmarks/perf/eval_speed.py [--items 32] [--max-new-tokens 256] [--batch-size 16] [--threads N]
                                         [--rounds 3] [--skip-lm-eval-default]
    python benchmarks/perf/eval_speed.py --mode loglikelihood [--items 32]     # HellaSwag choices

Both engines get the same in-memory model (the embedded SmolLM2-135M-Instruct base unless
``--model``), the same items (``gsm8k_mini``'s chat-formatted GSM8K prompts, or HellaSwag contexts
with their four endings), greedy decoding, the same token budget and stop strings. lm-eval's
``HFLM`` is called through its public ``generate_until`` / ``loglikelihood``; ours through
:class:`HFLanguageModel`. lm-eval runs twice: at the same batch size as ours, and at its own
default (``batch_size=1``, what ``lm_eval --model hf`` does unless told otherwise), so the figures
separate what batching buys from what the engine itself does. Outputs are compared too.

Generation runs in rounds that interleave the engines (ours, then lm-eval at the same batch size),
so load from other jobs on a shared machine hits them alike; the fastest round of each counts,
in wall time and in the process's CPU time (with ``--threads 1`` the latter is what the engine
itself spends, the figure least moved by other jobs). ``--forward-path`` adds this engine with
its hand-written Llama step switched off (decoding through the model's own forward pass), ``--unpacked``
this engine with its weights not packed for MKL's sgemm, ``--other-blas`` this engine with its
decode products in the BLAS it does not choose on this CPU (MKL or numpy's).
The CPU model (``lscpu``), the ISA torch dispatches to and numpy's OpenBLAS kernels are printed first; for an
AVX2-only machine set ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2
OPENBLAS_CORETYPE=Haswell`` before Python starts (``isa_emulation.EMULATION``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from isa_emulation import cpu_model, dispatch  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None)
    parser.add_argument("--mode", choices=("generate", "loglikelihood"), default="generate")
    parser.add_argument("--items", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--skip-lm-eval-default", action="store_true", help="skip lm-eval at batch_size=1")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every engine (generate mode)")
    parser.add_argument("--forward-path", action="store_true",
                        help="also time this engine decoding through the model's own forward (no hand-written Llama step)")
    parser.add_argument("--unpacked", action="store_true",
                        help="also time this engine with its weights not packed for MKL (F.linear in every step)")
    parser.add_argument("--other-blas", action="store_true",
                        help="also time this engine with its decode products in the other BLAS (MKL where numpy's "
                             "is the default, numpy's where MKL is)")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from mergebench import plugin_manager
    from mergebench.cache import ArtifactCache
    from mergebench.evaluation.hf import HFLanguageModel
    from mergebench.pipeline import Pipeline, RunContext

    registries = plugin_manager.registries()
    context = RunContext(cache=ArtifactCache())
    path = args.model or Pipeline(context, registries).base(registries.models.get("smollm2-135m-instruct")).path
    ours = HFLanguageModel.from_pretrained(path, batch_size=args.batch_size)
    print(f"CPU {cpu_model()}, {dispatch()}", flush=True)
    from mergebench.evaluation import packed_linear

    print(f"mode {args.mode}, batch {args.batch_size}, torch threads {torch.get_num_threads()}, "
          f"decode products through {packed_linear.blas()} ({packed_linear.BLAS_VARIABLE} to choose), "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    (compare_generation if args.mode == "generate" else compare_loglikelihood)(ours, context, args)


def lm_eval_batches(args) -> list[int]:
    return [args.batch_size] + ([] if args.skip_lm_eval_default or args.batch_size == 1 else [1])


def compare_generation(ours, context, args) -> None:
    """Rounds interleave the engines (ours, lm-eval at the same batch); the fastest round of each counts."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from mergebench.evaluation.api import GenerationRequest
    from mergebench_builtins.data import splits
    from mergebench_builtins.tasks.gsm8k import question_prompt

    docs = splits.gsm8k(context.cache).eval[: args.items]
    prompts = [question_prompt(ours, d["question"]) for d in docs]
    stops = ("Question:",)  # as lm-eval's gsm8k; the chat model ends its turn with EOS first
    print(f"{len(prompts)} GSM8K prompts, up to {args.max_new_tokens} new tokens, {args.rounds} interleaved rounds",
          flush=True)
    requests = [GenerationRequest(p, args.max_new_tokens, stops) for p in prompts]
    gen_kwargs = {"until": list(stops), "max_gen_toks": args.max_new_tokens, "do_sample": False}
    instances = [Instance(request_type="generate_until", doc={}, arguments=(p, gen_kwargs), idx=i)
                 for i, p in enumerate(prompts)]
    stock = HFLM(pretrained=ours.model, tokenizer=ours.tokenizer, batch_size=args.batch_size)
    engines = {"mergebench": lambda: ours.generate(requests)}
    if args.forward_path:
        engines["mergebench via the model's forward"] = lambda: forward_path(ours, requests)
    if args.unpacked:
        engines["mergebench, weights not packed"] = lambda: unpacked(ours, requests)
    if args.other_blas:
        from mergebench.evaluation import packed_linear

        other = "mkl" if packed_linear.blas() == "numpy" else "numpy"
        engines[f"mergebench, products through {other}"] = lambda: through(other, ours, requests)
    engines[f"lm-eval hf, batch {args.batch_size}"] = lambda: stock.generate_until(instances, disable_tqdm=True)
    times: dict[str, list[float]] = {name: [] for name in engines}
    cpu: dict[str, list[float]] = {name: [] for name in engines}
    outputs: dict[str, list[str]] = {}
    for round_ in range(args.rounds):
        for name, run in engines.items():
            started, cpu_started = time.perf_counter(), time.process_time()
            outputs[name] = run()
            times[name].append(time.perf_counter() - started)
            cpu[name].append(time.process_time() - cpu_started)
        print(f"round {round_ + 1}: " + ", ".join(f"{n} {t[-1]:.1f}s ({cpu[n][-1]:.1f}s cpu)" for n, t in times.items())
              + f"; load average {os.getloadavg()[0]:.1f}", flush=True)
    mine, reference, reference_cpu = outputs["mergebench"], min(times["mergebench"]), min(cpu["mergebench"])
    for name, seconds in times.items():
        same = sum(a.strip() == b.strip() for a, b in zip(mine, outputs[name]))
        print(f"{name}: fastest {min(seconds):.1f}s (all {', '.join(f'{s:.1f}' for s in seconds)}), least cpu "
              f"{min(cpu[name]):.1f}s; mergebench is {min(seconds) / reference:.2f}x faster in wall time, "
              f"{min(cpu[name]) / reference_cpu:.2f}x in cpu time; outputs identical to mergebench's "
              f"{same}/{len(prompts)}", flush=True)
    if not args.skip_lm_eval_default and args.batch_size != 1:
        started = time.perf_counter()
        theirs = HFLM(pretrained=ours.model, tokenizer=ours.tokenizer, batch_size=1).generate_until(
            instances, disable_tqdm=True)
        seconds = time.perf_counter() - started
        same = sum(a.strip() == b.strip() for a, b in zip(mine, theirs))
        print(f"lm-eval hf backend, batch 1 (once): {seconds:.1f}s; {seconds / reference:.2f}x; "
              f"identical outputs {same}/{len(prompts)}", flush=True)


def forward_path(ours, requests) -> list[str]:
    """This engine with the hand-written Llama step switched off: what that step buys, measured in the same run."""
    from mergebench.evaluation import llama_step

    supports = llama_step.supports
    llama_step.supports = lambda model: False
    try:
        return ours.generate(requests)
    finally:
        llama_step.supports = supports


def unpacked(ours, requests) -> list[str]:
    """This engine with no MKL-packed weights: what packing buys, measured in the same run."""
    from mergebench.evaluation import llama_step, packed_linear

    limit = packed_linear.PACK_LIMIT_BYTES
    packed_linear.PACK_LIMIT_BYTES = 0
    llama_step._ARRANGED.clear()
    try:
        return ours.generate(requests)
    finally:
        packed_linear.PACK_LIMIT_BYTES = limit
        llama_step._ARRANGED.clear()


def through(library: str, ours, requests) -> list[str]:
    """This engine with its decode products in ``library``'s BLAS: what the default choice buys, in the same run.

    Switching re-arranges the weights at the next call, so with this engine in the rounds every
    engine of ours pays its arrangement once a round (about a second), as a first call does."""
    from unittest import mock

    from mergebench.evaluation import packed_linear

    with mock.patch.dict(os.environ, {packed_linear.BLAS_VARIABLE: library}):
        return ours.generate(requests)


def compare_loglikelihood(ours, context, args) -> None:
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from mergebench.evaluation.api import LoglikelihoodRequest
    from mergebench_builtins.data import splits
    from mergebench_builtins.tasks.forgetting import HellaSwag

    task = HellaSwag.__new__(HellaSwag)  # only its prompt format is used
    docs = splits.hellaswag(context.cache).eval[: args.items]
    pairs = [(task.prompt(ours, d), " " + c) for d in docs for c in task.choices(d)]
    print(f"{len(docs)} HellaSwag items, {len(pairs)} log-likelihood requests", flush=True)
    started = time.perf_counter()
    mine = ours.loglikelihood([LoglikelihoodRequest(c, k) for c, k in pairs])
    ours_seconds = time.perf_counter() - started
    print(f"mergebench hf engine: {ours_seconds:.1f}s", flush=True)
    instances = [Instance(request_type="loglikelihood", doc={}, arguments=pair, idx=i) for i, pair in enumerate(pairs)]
    for batch in lm_eval_batches(args):
        stock = HFLM(pretrained=ours.model, tokenizer=ours.tokenizer, batch_size=batch)
        started = time.perf_counter()
        theirs = stock.loglikelihood(instances, disable_tqdm=True)
        seconds = time.perf_counter() - started
        worst = max(abs(a.logprob - b[0]) for a, b in zip(mine, theirs))
        print(f"lm-eval hf backend, batch {batch}: {seconds:.1f}s; speed-up {seconds / ours_seconds:.2f}x; "
              f"largest log-likelihood difference {worst:.2e}", flush=True)


if __name__ == "__main__":
    main()
