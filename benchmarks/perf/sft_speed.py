"""Finetuning speed on the embedded model: a plain PyTorch loop against ``run_sft`` and each speed lever.

Every configuration trains the embedded SmolLM2-135M-Instruct (float32, CPU) on the same real
chat examples (the ``mini-math`` recipe's GSM8K questions with reference solutions, chat
template, truncated to ``--max-length`` tokens, loss on the completion only), ``--steps`` steps
of ``--batch`` examples, in one process one after the other. Tokens/s counts every input
token (prompt and completion, no padding) over the whole run's optimizer steps, the first
included, and is compared with the plain loop measured in the same run:

- plain loop: tokenize, pad, ``model(input_ids, labels=...)`` (the model's own loss over full
  logits), backward, fused AdamW step (what the Trainer uses too).
- trl stock: trl's SFTTrainer as ``run_sft`` configured it before (``fast_loss=False``: trl's
  chunked LM head over every position, entropy and accuracy metrics each step).
- run_sft: today's defaults (completion-only LM head loss).
- then ``run_sft`` with one lever changed each: padding-free packing, 1 thread instead of the
  default, LoRA rank 16, frozen embeddings.

    MERGEBENCH_CACHE=... python benchmarks/perf/sft_speed.py [--steps 3] [--batch 8] [--max-length 128] [--rounds 1]

On a machine other jobs share, use ``--rounds 2`` or more: configurations then run
interleaved and each keeps its fastest time. ``OMP_WAIT_POLICY`` defaults to PASSIVE here.

The base model comes from the artifact cache (built first if missing).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: no spinning threads on a shared machine

from mergebench import plugin_manager
from mergebench.cache import ArtifactCache
from mergebench.pipeline import Pipeline, RunContext


def plain_loop(base_dir: Path, examples: list[dict], batch: int, max_length: int, lr: float) -> float:
    """Seconds for len(examples) / batch AdamW steps of a hand-written loop (completion-only loss)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, fused=True)  # the Trainer's default on torch >= 2.8
    seconds = 0.0
    for start in range(0, len(examples), batch):
        started = time.perf_counter()
        rows = []
        for e in examples[start:start + batch]:
            prompt = tokenizer.apply_chat_template([{"role": "user", "content": e["prompt"]}], tokenize=True,
                                                   add_generation_prompt=True, return_dict=False)
            full = tokenizer.apply_chat_template([{"role": "user", "content": e["prompt"]},
                                                  {"role": "assistant", "content": e["completion"]}],
                                                 tokenize=True, return_dict=False)[:max_length]
            rows.append((full, [-100] * min(len(prompt), len(full)) + full[len(prompt):]))
        width = max(len(ids) for ids, _ in rows)
        pad = tokenizer.pad_token_id or 0
        input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in rows])
        attention = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows])
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in rows])
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds += time.perf_counter() - started
    return seconds


def sft_seconds(base_dir: Path, examples: list[dict], settings) -> float:
    """Seconds from the start of training to the end of the last step of ``run_sft``: batching,
    collation, forward, backward, optimizer and per-step logging (model loading, dataset
    tokenizing and saving excluded)."""
    from transformers import TrainerCallback

    from mergebench.finetune.sft import run_sft

    marks: list[float] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            marks.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            marks.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        run_sft(base_dir, examples, Path(tmp) / "out", settings, seed=0, work_dir=Path(tmp) / "work",
                description="speed", callbacks=[Clock()])
    return marks[-1] - marks[0]


def loss_head_seconds(base_dir: Path, batch: int, length: int, completion_fraction: float, repeats: int = 5) -> dict:
    """Forward+backward seconds (fastest of ``repeats``) of the loss head alone on the model's shapes:
    the model's own full-logit cross-entropy, trl 1.x's chunked head as it runs off CUDA (every
    position, entropy and top-1 for its logs, logits recomputed in backward) and ``run_sft``'s
    completion-rows-only projection."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoConfig
    from trl.kernels import ChunkedLogProbFunction

    config = AutoConfig.from_pretrained(str(base_dir)).get_text_config()
    vocab, hidden = config.vocab_size, config.hidden_size
    generator = torch.Generator().manual_seed(0)
    weight = (torch.randn(vocab, hidden, generator=generator) * 0.02).requires_grad_()
    states = torch.randn(batch, length - 1, hidden, generator=generator)
    labels = torch.randint(0, vocab, (batch, length - 1), generator=generator)
    labels[:, : int((length - 1) * (1 - completion_fraction))] = -100
    mask = labels != -100

    def full_logits(h):
        return F.cross_entropy((h @ weight.T).view(-1, vocab), labels.view(-1), ignore_index=-100)

    def trl_chunked(h):
        log_probs = ChunkedLogProbFunction.apply(h.reshape(-1, hidden), weight, None, labels.clamp(min=0).reshape(-1),
                                                 1.0, 32768, None, 1.0, ("log_probs", "entropy", "is_top1"))[0]
        return -log_probs.view(mask.shape).masked_fill(~mask, 0).sum() / mask.sum()

    def completion_rows(h):
        return F.cross_entropy(h[mask] @ weight.T, labels[mask])

    times = {}
    for name, loss in (("model's own loss (full logits)", full_logits), ("trl 1.x chunked head (CPU path)", trl_chunked),
                       ("run_sft: completion rows only", completion_rows)):
        spans = []
        for _ in range(repeats + 1):
            h = states.clone().requires_grad_()
            started = time.perf_counter()
            loss(h).backward()
            spans.append(time.perf_counter() - started)
            weight.grad = None
        times[name] = min(spans[1:])
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every configuration this many times, interleaved, and keep each one's fastest")
    parser.add_argument("--only", default="",
                        help="comma-separated row numbers to run (1 = the plain loop, always run); default all")
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args()

    import torch
    from transformers import AutoTokenizer

    from mergebench.finetune.sft import SFTSettings

    registries = plugin_manager.registries()
    pipeline = Pipeline(RunContext(cache=ArtifactCache(args.cache_dir), device="cpu"), registries)
    base_dir = pipeline.base(registries.models.get(args.model)).path
    recipe_spec = registries.recipes.get("mini-math")
    examples = recipe_spec.load()(recipe_spec, pipeline.context).training_examples()[: args.steps * args.batch]
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    tokens = sum(min(len(tokenizer.apply_chat_template(
        [{"role": "user", "content": e["prompt"]}, {"role": "assistant", "content": e["completion"]}],
        tokenize=True, return_dict=False)), args.max_length) for e in examples)
    prompt_tokens = sum(min(len(tokenizer.apply_chat_template([{"role": "user", "content": e["prompt"]}], tokenize=True,
                                                              add_generation_prompt=True, return_dict=False)),
                            args.max_length) for e in examples)

    threads = torch.get_num_threads()
    default = SFTSettings(learning_rate=2e-4, epochs=1, batch_size=args.batch, max_length=args.max_length,
                          warmup_ratio=0.0, save_steps=10_000, logging_steps=1)
    runs = [
        ("plain PyTorch loop", None),
        ("trl stock (fast_loss=False)", dataclasses.replace(default, fast_loss=False)),
        ("run_sft defaults", default),
        ("+ padding-free packing", dataclasses.replace(default, packing=True)),
        (f"+ 1 thread (default {threads})", dataclasses.replace(default, threads=1)),
        ("+ LoRA rank 16 (all linear)", dataclasses.replace(default, lora_rank=16)),
        ("+ frozen embeddings", dataclasses.replace(default, freeze_embeddings=True)),
    ]
    if args.only:
        keep = {1} | {int(i) for i in args.only.split(",")}
        runs = [run for i, run in enumerate(runs, 1) if i in keep]
    print(f"{args.model}: {len(examples)} GSM8K chat examples, {tokens} tokens, {args.steps} steps of {args.batch}, "
          f"max_length {args.max_length}, float32, {threads} torch threads", flush=True)
    measured: dict[str, list[float]] = {name: [] for name, _ in runs}
    for round_ in range(args.rounds):
        for name, settings in runs:
            seconds = (plain_loop(base_dir, examples, args.batch, args.max_length, 2e-4) if settings is None
                       else sft_seconds(base_dir, examples, settings))
            measured[name].append(seconds)
            print(f"  round {round_ + 1}, {name}: {seconds:.1f} s", flush=True)
            gc.collect()
    best = {name: min(times) for name, times in measured.items()}
    plain = tokens / best[runs[0][0]]
    print(f"\n| configuration | seconds (fastest of {args.rounds}) | tokens/s | × plain loop |\n|---|---|---|---|")
    for name, seconds in best.items():
        spread = f" ({', '.join(f'{t:.1f}' for t in measured[name])})" if args.rounds > 1 else ""
        print(f"| {name} | {seconds:.1f}{spread} | {tokens / seconds:.0f} | {tokens / seconds / plain:.2f} |")
    fraction = 1 - prompt_tokens / tokens
    print(f"\nThe loss head alone, one batch ({args.batch} x {args.max_length} tokens, {fraction:.0%} completion "
          "positions), forward+backward, fastest of 5:")
    for name, seconds in loss_head_seconds(base_dir, args.batch, args.max_length, fraction).items():
        print(f"  {name}: {seconds:.2f} s")


if __name__ == "__main__":
    main()
