"""Does ``torch.compile`` make greedy decoding faster on a CPU? transformers' ``generate``, eager against compiled.

    python benchmarks/perf/compile_decode.py [--rows 16] [--prompt 64] [--new-tokens 64] [--threads 1]

On the embedded SmolLM2-135M-Instruct (from the artifact cache, ``MERGEBENCH_CACHE``; built first
if missing), the same random prompts decoded greedily to a fixed length by: transformers'
``generate`` with its dynamic cache (what lm-eval's ``hf`` backend runs; the peer), with a static
cache, and with a static cache and the model's forward under ``torch.compile`` (inductor), whose
first call includes compiling. Prints seconds, the ratio to the peer, and whether the tokens are
identical to the peer's. Set the AVX2 variables (``ATEN_CPU_CAPABILITY=avx2
ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 OPENBLAS_CORETYPE=Haswell``) before Python starts for the slower CPUs.
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--prompt", type=int, default=64, help="prompt tokens per row")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from mergebench import plugin_manager
    from mergebench.cache import ArtifactCache
    from mergebench.pipeline import Pipeline, RunContext

    torch.set_num_threads(args.threads)
    registries = plugin_manager.registries()
    base = Pipeline(RunContext(cache=ArtifactCache()), registries).base(registries.models.get("smollm2-135m-instruct"))
    print(f"CPU: {cpu_model()}; {dispatch()}; {args.threads} thread(s); "
          f"{args.rows} rows × {args.prompt} prompt tokens, {args.new_tokens} new tokens; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    ids = torch.randint(100, 40_000, (args.rows, args.prompt), generator=torch.Generator().manual_seed(0))

    def load():
        model = AutoModelForCausalLM.from_pretrained(str(base.path), dtype=torch.float32, use_safetensors=True)
        model.generation_config.pad_token_id = 0
        return model

    def decode(model, tokens: int = args.new_tokens, **kwargs):
        started = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens,
                                 min_new_tokens=tokens, do_sample=False, **kwargs)
        return time.perf_counter() - started, out

    eager = load()
    decode(eager, tokens=2)  # warm-up
    peer, reference = decode(eager)
    rows = [("generate, dynamic cache (peer)", peer, reference)]
    rows.append(("generate, static cache", *decode(eager, cache_implementation="static")))
    compiled = load()
    compiled.forward = torch.compile(compiled.forward, dynamic=False)
    rows.append(("generate, static cache, compiled: first call (compiling)", *decode(compiled, cache_implementation="static")))
    rows.append(("generate, static cache, compiled: second call", *decode(compiled, cache_implementation="static")))
    print("| engine | seconds | × peer's speed | tokens identical to the peer's |\n|---|---|---|---|")
    for name, seconds, out in rows:
        same = int((out == reference).all(dim=1).sum())
        print(f"| {name} | {seconds:.1f} | {peer / seconds:.2f} | {same}/{args.rows} |")
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
