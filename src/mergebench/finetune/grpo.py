"""GRPO for math with trl's GRPOTrainer, and the study's "SFT then GRPO" recipe shape.

The reward is rule-based, as in the study's math RL stage: 1.0 when the final number of a
completion equals the gold answer, else 0.0, with the number extraction the GSM8K exact-match
task uses (``mergebench.evaluation.answers.final_number``: the first number after the last
"answer is", else the last number; commas dropped). Each group of ``num_generations``
completions of one prompt is compared with itself, so only prompts the model sometimes gets
right move the weights.

Like SFT, the result is a full checkpoint in ``out_dir`` and checkpoints in ``work_dir`` make a
killed run resume.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mergebench import progress
from mergebench.errors import UsageError
from mergebench.evaluation.answers import boxed, final_number
from mergebench.finetune.sft import SFTSettings, _last_checkpoint, check_base, common_arguments, progress_callback, quiet_logs, run_sft


@dataclass(frozen=True)
class GRPOSettings:
    learning_rate: float = 1e-6
    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 8
    """Completions per optimizer step (``per_device_train_batch_size``); a multiple of ``num_generations``."""
    num_generations: int = 4
    """Completions sampled per prompt (the group whose rewards are normalized together)."""
    max_completion_length: int = 256
    temperature: float = 1.0
    beta: float = 0.0
    """KL coefficient against the starting model; 0 loads no reference model (trl's default)."""
    grad_accum: int = 1
    warmup_ratio: float = 0.0
    scheduler: str = "constant"
    save_steps: int = 25
    threads: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _text(completion: Any) -> str:
    """A completion's text: trl passes a string, or for chat prompts a list of messages."""
    if isinstance(completion, str):
        return completion
    return "".join(m.get("content", "") for m in completion if isinstance(m, dict))


def final_number_reward(completions: Sequence[Any], answer: Sequence[str], **_: Any) -> list[float]:
    """1.0 where the completion's final number equals the gold ``answer`` (normalized the same way), else 0.0."""
    return _exact_match(final_number, completions, answer)


def boxed_answer_reward(completions: Sequence[Any], answer: Sequence[str], **_: Any) -> list[float]:
    """1.0 where the completion's last ``\\boxed{}`` holds the gold answer (whitespace ignored), else 0.0.

    The study's GRPO on NuminaMath-TIR: competition answers are expressions, not only numbers.
    """
    return [1.0 if boxed(_text(c)) == re.sub(r"\s+", "", str(g)) else 0.0 for c, g in zip(completions, answer)]


def _exact_match(extract: Callable[[str], str | None], completions: Sequence[Any], answer: Sequence[str]) -> list[float]:
    rewards = []
    for completion, gold in zip(completions, answer):
        expected = extract(str(gold))
        rewards.append(1.0 if expected is not None and extract(_text(completion)) == expected else 0.0)
    return rewards


def _validate_items(items: Sequence[Any], description: str) -> None:
    if not items:
        raise UsageError(f"{description}: no GRPO prompts; give at least one {{'prompt': ..., 'answer': ...}} item")
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), str) or "answer" not in item:
            raise UsageError(f"{description}: GRPO item {i} must be a dict with a string 'prompt' and an 'answer', "
                             f"got {item!r:.80}")


def run_grpo(model_dir: Path, prompts_with_answers: Sequence[dict[str, Any]], out_dir: Path, settings: GRPOSettings, *,
             seed: int, work_dir: Path, description: str, reward: Callable[..., list[float]] = final_number_reward,
             callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """GRPO from ``model_dir`` on ``{"prompt", "answer"}`` items into ``out_dir``; returns the summary."""
    _validate_items(prompts_with_answers, description)
    if settings.batch_size % settings.num_generations:
        raise UsageError(f"{description}: GRPO batch_size ({settings.batch_size}) must be a multiple of "
                         f"num_generations ({settings.num_generations})")
    check_base(model_dir, description)
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if not tokenizer.chat_template:
        raise UsageError(f"{description}: the model at {model_dir} has no chat template, which GRPO on chat prompts "
                         "needs; add one to its tokenizer_config.json or start from an instruct/SFT model")
    previous_threads = torch.get_num_threads()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, use_safetensors=True)
        dataset = Dataset.from_list([
            {"prompt": [{"role": "user", "content": item["prompt"]}], "answer": str(item["answer"])}
            for item in prompts_with_answers
        ])
        config = GRPOConfig(
            output_dir=str(work_dir),
            learning_rate=settings.learning_rate,
            num_train_epochs=settings.epochs,
            max_steps=settings.max_steps,
            per_device_train_batch_size=settings.batch_size,
            gradient_accumulation_steps=settings.grad_accum,
            num_generations=settings.num_generations,
            max_completion_length=settings.max_completion_length,
            temperature=settings.temperature,
            beta=settings.beta,
            lr_scheduler_type=settings.scheduler,
            warmup_steps=settings.warmup_ratio,
            logging_steps=1,
            **common_arguments(seed, settings.save_steps),
        )
        rewards: list[float] = []
        with progress.progress(f"GRPO {description}", total=None, unit="steps") as bar:
            trainer = GRPOTrainer(model=model, reward_funcs=reward, args=config, train_dataset=dataset,
                                  processing_class=tokenizer, callbacks=[progress_callback(bar, "reward", rewards), *callbacks])
            quiet_logs(trainer)
            resume = _last_checkpoint(work_dir)
            trainer.train(resume_from_checkpoint=resume)
        trainer.model.save_pretrained(str(out_dir), safe_serialization=True)
        tokenizer.save_pretrained(str(out_dir))
    finally:
        torch.set_num_threads(previous_threads)
    summary = {
        "prompts": len(prompts_with_answers),
        "steps": trainer.state.global_step,
        "resumed_from": resume,
        "first_reward": rewards[0] if rewards else None,
        "last_reward": rewards[-1] if rewards else None,
        "settings": settings.as_dict(),
    }
    (out_dir / "training_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def run_sft_then_grpo(base_dir: Path, sft_examples: Sequence[dict[str, str]],
                      prompts_with_answers: Sequence[dict[str, Any]], out_dir: Path, sft: SFTSettings,
                      grpo: GRPOSettings, *, seed: int, work_dir: Path, description: str,
                      callbacks: Sequence[Any] = (), reward: Callable[..., list[float]] = final_number_reward) -> dict[str, Any]:
    """The study's math recipe shape: SFT into ``work_dir/sft-model``, then GRPO from it into ``out_dir``.

    Both stages resume: a finished SFT model (its ``training_summary.json`` exists, written last)
    is reused, and each stage keeps its own checkpoints (``work_dir/sft``, ``work_dir/grpo``).
    ``callbacks`` go to both stages.
    """
    import shutil

    sft_model = work_dir / "sft-model"
    if (sft_model / "training_summary.json").is_file():
        sft_summary = json.loads((sft_model / "training_summary.json").read_text())
        sft_summary["reused"] = True
    else:
        partial = work_dir / "sft-model.partial"
        shutil.rmtree(partial, ignore_errors=True)
        sft_summary = run_sft(base_dir, sft_examples, partial, sft, seed=seed, work_dir=work_dir / "sft",
                              description=f"{description} (SFT)", callbacks=callbacks)
        partial.rename(sft_model)
    grpo_summary = run_grpo(sft_model, prompts_with_answers, out_dir, grpo, seed=seed, work_dir=work_dir / "grpo",
                            description=f"{description} (GRPO)", callbacks=callbacks, reward=reward)
    summary = {"sft": sft_summary, "grpo": grpo_summary, "steps": sft_summary["steps"] + grpo_summary["steps"]}
    (out_dir / "training_summary.json").write_text(json.dumps(summary, indent=2))
    return summary
