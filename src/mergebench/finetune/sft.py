"""Supervised finetuning with trl's SFTTrainer: chat-formatted prompt/completion pairs, loss on completions.

The trained model is written as a full float checkpoint with the base's tokenizer and chat
template, ready to be merged: a LoRA run (``lora_rank > 0``) is merged back into dense weights
first, so every expert has the base's tensor names and shapes. Intermediate checkpoints go to
``work_dir`` so a killed run resumes where it stopped.

Speed on a CPU. trl 1.x computes the loss through a "fused" chunked LM head that, off
CUDA/XPU, projects *every* position (prompt and padding too) through the vocabulary, computes
the entropy and top-1 accuracy of each position for its logs, and projects again in the
backward pass. On a 135M model with a 49k vocabulary that head is the largest single cost, so
:class:`_CompletionLossSFTTrainer` replaces only ``compute_loss``: run the backbone, project
just the positions whose next token is a completion token, and take the cross-entropy
(``fast_loss=True``, the default; same loss, no entropy/accuracy logs).
``benchmarks/perf/sft_speed.py`` measures it against a plain PyTorch loop.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mergebench import progress
from mergebench.errors import CheckpointError, UsageError
from mergebench.evaluation import packed_linear

LLAMA_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


COST_ONLY_SETTINGS = ("activation_checkpointing",)
"""Settings left out of :meth:`SFTSettings.fingerprint`: they change the cost of training, not its result."""


@dataclass(frozen=True)
class SFTSettings:
    learning_rate: float = 1e-4
    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 8
    grad_accum: int = 1
    max_length: int = 256
    warmup_ratio: float = 0.1
    scheduler: str = "cosine"
    weight_decay: float = 0.0
    save_steps: int = 50
    lora_rank: int = 0
    """0 trains every weight; above 0 trains a LoRA adapter of this rank, merged into the weights at the end."""
    lora_alpha: float | None = None
    """LoRA scaling numerator (the update is ``alpha / rank * B @ A``); None means ``2 * lora_rank``."""
    lora_targets: tuple[str, ...] = LLAMA_LINEAR
    """Module names (suffixes) that get an adapter; the rest stay exactly the base's."""
    packing: bool = False
    """Padding-free packing of several examples into one row (trl's ``bfd`` strategy)."""
    freeze_embeddings: bool = False
    """Keep the input embeddings fixed (with tied embeddings this fixes the LM head too)."""
    threads: int = 0
    """``torch.set_num_threads`` during training; 0 leaves torch's setting alone."""
    fast_loss: bool = True
    """Project only completion positions through the LM head (see the module docstring)."""
    length_batches: bool = False
    """Batches of similar length in random order instead of random batches (less padding; :mod:`.batching`)."""
    logging_steps: int = 1
    activation_checkpointing: bool = True
    """Recompute each layer's forward pass during backward instead of keeping its activations
    (trl's default). It saves memory that large models on GPUs need and costs a third more compute,
    which a 135M model on a CPU, whose activations fit in RAM many times over, need not pay."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fingerprint(self) -> dict[str, Any]:
        """The settings an expert's cache key holds: those that change the trained weights.

        Activation checkpointing changes what training costs, not what it computes (the same
        forward pass, run again; ``tests/test_finetune.py`` checks the weights are bit for bit
        equal), so switching it keeps every expert already trained."""
        return {k: v for k, v in asdict(self).items() if k not in COST_ONLY_SETTINGS}


def common_arguments(seed: int, save_steps: int) -> dict[str, Any]:
    """The Trainer arguments SFT and GRPO share: seeding, checkpoints to resume from, a quiet CPU-friendly loop."""
    import torch

    return dict(seed=seed, data_seed=seed, save_strategy="steps", save_steps=save_steps, save_total_limit=1,
                report_to=[], disable_tqdm=True, use_cpu=not torch.cuda.is_available(), bf16=False,
                dataloader_num_workers=0)


def progress_callback(bar, log_key: str, values: list[float]):
    """A TrainerCallback that advances ``bar`` each optimizer step and collects ``logs[log_key]`` into ``values``."""
    from transformers import TrainerCallback

    class _Progress(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            bar.set_total(state.max_steps)

        def on_step_end(self, args, state, control, **kwargs):
            bar.advance()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and log_key in logs:
                values.append(float(logs[log_key]))

    return _Progress()


def quiet_logs(trainer) -> None:
    """Drop transformers' printer of raw log dicts (it prints when tqdm is off): our progress bar reports steps."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)


def _last_checkpoint(work_dir: Path) -> str | None:
    """The newest complete checkpoint (``trainer_state.json`` is written last) in ``work_dir``."""
    checkpoints = [p for p in work_dir.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    checkpoints.sort(key=lambda p: int(p.name.split("-")[-1]))
    return str(checkpoints[-1]) if checkpoints else None


def _conversation(example: dict[str, str]) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    return [{"role": "user", "content": example["prompt"]}], [{"role": "assistant", "content": example["completion"]}]


def check_base(model_dir: Path, description: str) -> None:
    """The model a trainer starts from, checked before transformers loads it: a truncated shard (a hub
    download cut short) is one line naming the file and the fix, not a loader's traceback minutes in."""
    from mergebench.checkpoint.reader import INDEX_FILE, check_safetensors

    model_dir = Path(model_dir)
    if not (model_dir / INDEX_FILE).is_file() and not any(model_dir.glob("*.safetensors")):
        raise CheckpointError(f"{description}: {model_dir} has no safetensors weights, which finetuning loads (never "
                              "pickles); give a complete checkpoint folder, or convert its weights (save_pretrained "
                              "with safe_serialization=True)")
    check_safetensors(model_dir)


def validate_examples(examples: Sequence[Any], tokenizer: Any, max_positions: int | None, description: str) -> list[int]:
    """Reject bad training data before any training starts; returns each example's token count.

    Raises :class:`UsageError` for an empty list, an example that is not a dict of string
    ``prompt`` and ``completion``, and an example longer than the model's context.
    """
    if not examples:
        raise UsageError(f"{description}: no training examples; give the recipe at least one "
                         "{'prompt': ..., 'completion': ...} example")
    for i, example in enumerate(examples):
        if not isinstance(example, dict):
            raise UsageError(f"{description}: training example {i} is a {type(example).__name__}, not a dict; "
                             "each example must be {'prompt': str, 'completion': str}")
        for field in ("prompt", "completion"):
            if field not in example:
                raise UsageError(f"{description}: training example {i} has no {field!r} (keys: {sorted(example)}); "
                                 "each example must be {'prompt': str, 'completion': str}")
            if not isinstance(example[field], str):
                raise UsageError(f"{description}: training example {i} has a {type(example[field]).__name__} "
                                 f"{field!r}, not a string; convert it to text before training")
    if not tokenizer.chat_template:
        raise UsageError(
            f"{description}: the base model has no chat template, which SFT on chat data needs; "
            "add one to its tokenizer_config.json or use an instruct base"
        )
    lengths = []
    for i, example in enumerate(examples):
        prompt, completion = _conversation(example)
        ids = tokenizer.apply_chat_template(prompt + completion, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        lengths.append(len(ids))
        if max_positions is not None and len(ids) > max_positions:
            raise UsageError(
                f"{description}: training example {i} is {len(ids)} tokens with its chat template, more than the "
                f"model's context of {max_positions} (max_position_embeddings); shorten or drop that example"
            )
    return lengths


def _checkpointing_argument(config_class: type) -> str:
    """The Trainer argument that switches activation checkpointing: transformers 5 renamed
    ``gradient_checkpointing`` (which still works, with a deprecation warning) to ``activation_checkpointing``."""
    import dataclasses

    names = {field.name for field in dataclasses.fields(config_class)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"


def _fast_loss_supported(config: Any) -> bool:
    """Whether the LM head is a plain projection (with at most Gemma-2's final logit softcapping)."""
    text = config.get_text_config()
    scaled = any(getattr(text, name, None) not in (None, 1.0)
                 for name in ("logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling"))
    return not scaled and not getattr(text, "output_router_logits", False)


def _trainer_class(fast_loss: bool, length_batches: bool = False):
    from trl import SFTTrainer

    base = _completion_loss_trainer(SFTTrainer) if fast_loss else SFTTrainer
    if not length_batches:
        return base

    class _LengthBatchedSFTTrainer(base):
        """Draws batches of similar length (:class:`~mergebench.finetune.batching.LengthGroupedBatches`)."""

        def _get_train_sampler(self, train_dataset=None):
            from mergebench.finetune.batching import LengthGroupedBatches

            dataset = train_dataset if train_dataset is not None else self.train_dataset
            lengths = [len(ids) for ids in dataset["input_ids"]]
            return LengthGroupedBatches(lengths, self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                        self.args.data_seed if self.args.data_seed is not None else self.args.seed)

    return _LengthBatchedSFTTrainer


def _completion_loss_trainer(SFTTrainer):
    class _CompletionLossSFTTrainer(SFTTrainer):
        """SFTTrainer whose loss projects only the supervised positions through the LM head."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            import torch
            import torch.nn.functional as F

            base = model.get_base_model() if hasattr(model, "get_base_model") else model
            if not self.model.training or not _fast_loss_supported(base.config):
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            labels = inputs["labels"]
            model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
            model_inputs["use_cache"] = False
            hidden = getattr(base, base.base_model_prefix)(**model_inputs).last_hidden_state
            targets = labels[:, 1:]
            mask = targets != -100
            logits = base.get_output_embeddings()(hidden[:, :-1][mask]).float()
            softcap = getattr(base.config.get_text_config(), "final_logit_softcapping", None)
            if softcap:
                logits = torch.tanh(logits / softcap) * softcap
            count = mask.sum() if num_items_in_batch is None else num_items_in_batch
            loss = F.cross_entropy(logits, targets[mask], reduction="sum") / torch.as_tensor(count).clamp(min=1)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes
            return (loss, {"loss": loss}) if return_outputs else loss

    return _CompletionLossSFTTrainer


def run_sft(base_dir: Path, examples: Sequence[dict[str, str]], out_dir: Path, settings: SFTSettings, *,
            seed: int, work_dir: Path, description: str, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Finetune ``base_dir`` on ``examples`` (dicts with ``prompt`` and ``completion``) into ``out_dir``.

    Resumes from the newest checkpoint in ``work_dir`` if a previous run left one. ``callbacks``
    are extra transformers ``TrainerCallback`` objects (tests use one to kill a run midway).
    Returns the training summary, also written to ``out_dir/training_summary.json``.
    """
    if not examples:  # before the heavy imports
        validate_examples(examples, None, None, description)
    check_base(base_dir, description)
    import torch
    from datasets import Dataset
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoTokenizer,
    )
    from trl import SFTConfig

    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    model_config = AutoConfig.from_pretrained(str(base_dir))
    max_positions = getattr(model_config.get_text_config(), "max_position_embeddings", None)
    lengths = validate_examples(examples, tokenizer, max_positions, description)
    if settings.lora_rank < 0:
        raise UsageError(f"{description}: lora_rank must be 0 (full finetuning) or positive, not {settings.lora_rank}")

    previous_threads = torch.get_num_threads()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32, use_safetensors=True)
        if settings.freeze_embeddings:
            model.get_input_embeddings().weight.requires_grad_(False)
        peft_config = None
        if settings.lora_rank:
            from peft import LoraConfig

            peft_config = LoraConfig(
                r=settings.lora_rank,
                lora_alpha=settings.lora_alpha if settings.lora_alpha is not None else 2 * settings.lora_rank,
                target_modules=list(settings.lora_targets),
                lora_dropout=0.0,
                bias="none",
                task_type="CAUSAL_LM",
            )
        dataset = Dataset.from_list([dict(zip(("prompt", "completion"), _conversation(e))) for e in examples])
        config = SFTConfig(
            output_dir=str(work_dir),
            learning_rate=settings.learning_rate,
            num_train_epochs=settings.epochs,
            max_steps=settings.max_steps,
            per_device_train_batch_size=settings.batch_size,
            gradient_accumulation_steps=settings.grad_accum,
            lr_scheduler_type=settings.scheduler,
            warmup_steps=settings.warmup_ratio,  # a float below 1 is a ratio of the total steps
            weight_decay=settings.weight_decay,
            max_length=settings.max_length,
            completion_only_loss=True,
            packing=settings.packing,
            logging_steps=settings.logging_steps,
            **{_checkpointing_argument(SFTConfig): settings.activation_checkpointing},
            **common_arguments(seed, settings.save_steps),
        )
        losses: list[float] = []
        with progress.progress(f"finetune {description}", total=None, unit="steps") as bar:
            trainer = _trainer_class(settings.fast_loss, settings.length_batches)(
                model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                callbacks=[progress_callback(bar, "loss", losses), *callbacks], peft_config=peft_config,
            )
            quiet_logs(trainer)
            resume = _last_checkpoint(work_dir)
            with packed_linear.numpy_linears(trainer.model):  # numpy's BLAS where MKL serves the CPU poorly
                trainer.train(resume_from_checkpoint=resume)
        trained = trainer.model
        if settings.lora_rank:
            trained = trained.merge_and_unload()
        trained.save_pretrained(str(out_dir), safe_serialization=True)
        tokenizer.save_pretrained(str(out_dir))
    finally:
        torch.set_num_threads(previous_threads)
    summary = {
        "examples": len(examples),
        "tokens": sum(min(n, settings.max_length) for n in lengths),
        "truncated_examples": sum(n > settings.max_length for n in lengths),
        "steps": trainer.state.global_step,
        "resumed_from": resume,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "settings": settings.as_dict(),
    }
    (out_dir / "training_summary.json").write_text(json.dumps(summary, indent=2))
    return summary
