"""The study's recipes (Table 2, Table 5, Appendix C.1), on its datasets by hub id.

SFT for 2 epochs with AdamW and a cosine schedule at a global batch of 128 (gradient
accumulation makes up the difference on fewer devices); learning rate 1e-5 and sequence length
4096 for the 2B/3B bases, 5e-5 and 3072 for the 8B/9B ones. Math on the 8B/9B bases adds GRPO on
NuminaMath-TIR after SFT, with an exact-final-answer reward. The size class is read off the base
checkpoint (its parameter count), so one recipe serves every base.

These need the hub (or local copies, see :mod:`mergebench.finetune.hub_data`) and GPUs; the study's
released experts make them unnecessary for its eight bases, where they describe the experts'
training data for the data-aware merge methods (their ``samples``). Use them to build experts
of a new base.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from mergebench.errors import UsageError
from mergebench.finetune.api import Recipe
from mergebench.finetune.sft import SFTSettings, run_sft

GLOBAL_BATCH = 128
LARGE_BASE_PARAMS = 5e9
"""Bases above this many parameters (the 8B/9B ones) train with the large-model settings."""


def _messages(row: dict) -> tuple[str, str]:
    """The first user turn and the assistant turn after it."""
    turns = row["messages"]
    user = next(i for i, t in enumerate(turns) if t["role"] == "user")
    return turns[user]["content"], next(t["content"] for t in turns[user + 1:] if t["role"] == "assistant")


def _wildjailbreak(row: dict) -> tuple[str, str]:
    prompt = row.get("adversarial") or row["vanilla"]
    return prompt, row["completion"]


# how each dataset's rows become (prompt, completion)
FORMATS: dict[str, Callable[[dict], tuple[str, str]]] = {
    "messages": _messages,
    "query_response": lambda r: (r["query"], r["response"]),
    "inputs_targets": lambda r: (r["inputs"], r["targets"]),
    "instruction_response": lambda r: (r["instruction"], r["response"]),
    "prompt_response": lambda r: (r["prompt"], r["response"]),
    "wildjailbreak": _wildjailbreak,
}


@dataclass(frozen=True)
class HubSet:
    hub_id: str
    format: str
    config: str | None = None
    split: str = "train"
    keep: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """Row filters: (column, accepted values)."""
    load_kwargs: tuple[tuple[str, Any], ...] = ()
    """Extra ``datasets.load_dataset`` arguments the dataset card asks for."""

    def rows(self) -> list[dict[str, str]]:
        from mergebench.finetune.hub_data import load_rows

        dataset = load_rows(self.hub_id, self.config, self.split, **dict(self.load_kwargs))
        for column, accepted in self.keep:
            dataset = dataset.filter(lambda row, c=column, a=accepted: row.get(c) in a)
        convert = FORMATS[self.format]
        examples = []
        for index, row in enumerate(dataset):
            try:
                prompt, completion = convert(row)
                if not isinstance(prompt, str):
                    raise TypeError(f"prompt is {prompt!r}")
            except (KeyError, StopIteration, TypeError) as exc:
                columns = sorted(k for k, v in row.items() if v is not None)  # json loading fills absent columns with None
                raise UsageError(f"{self.hub_id} row {index} does not have the {self.format!r} layout this recipe "
                                 f"expects ({type(exc).__name__}: {exc}); columns: {columns}") from None
            if prompt and completion:  # WildGuardMix has prompt-only rows: nothing to learn from them
                examples.append({"prompt": prompt, "completion": completion})
        if not examples:
            raise UsageError(f"{self.hub_id}: no usable (prompt, completion) rows in split {self.split!r}")
        return examples


def parameter_count(model_dir: Path) -> int:
    """Parameters of a safetensors checkpoint, read from its headers (no weights loaded)."""
    from mergebench.checkpoint import CheckpointReader

    reader = CheckpointReader(model_dir)
    total = 0
    for name in reader.names():
        count = 1
        for dim in reader.shape(name):
            count *= dim
        total += count
    return total


class StudySFT(Recipe):
    """SFT on the spec's ``datasets`` option (a tuple of :class:`HubSet`) with the study's settings."""

    per_device_batch = 4

    @property
    def datasets(self) -> tuple[HubSet, ...]:
        return tuple(self.options["datasets"])

    def fingerprint(self) -> dict[str, Any]:
        return {"datasets": [vars(d) for d in self.datasets], "global_batch": GLOBAL_BATCH, "epochs": 2,
                "grpo": [vars(d) for d in self.options.get("grpo", ())]}

    def settings(self, base_dir: Path) -> SFTSettings:
        large = parameter_count(base_dir) > LARGE_BASE_PARAMS
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if GLOBAL_BATCH % (self.per_device_batch * world):
            raise UsageError(f"global batch {GLOBAL_BATCH} is not a multiple of {self.per_device_batch} x {world} devices")
        return SFTSettings(learning_rate=5e-5 if large else 1e-5, epochs=2, batch_size=self.per_device_batch,
                           grad_accum=GLOBAL_BATCH // (self.per_device_batch * world), max_length=3072 if large else 4096,
                           warmup_ratio=0.03, scheduler="cosine", save_steps=200)

    def examples(self) -> list[dict[str, str]]:
        return [e for d in self.datasets for e in d.rows()]

    def samples(self, n: int, seed: int = 0) -> list[dict[str, str]]:
        examples = self.examples()
        return random.Random(seed).sample(examples, min(n, len(examples)))

    def train(self, base_dir: Path, out_dir: Path, *, seed: int, work_dir: Path) -> dict:
        settings = self.settings(base_dir)
        examples = self.examples()  # fails here, before any training, if the data is unreachable
        grpo_sets = tuple(self.options.get("grpo", ()))
        if not grpo_sets or parameter_count(base_dir) <= LARGE_BASE_PARAMS:
            return run_sft(base_dir, examples, out_dir, settings, seed=seed, work_dir=work_dir, description=self.spec.name)
        return self._sft_then_grpo(base_dir, examples, grpo_sets, out_dir, settings, seed=seed, work_dir=work_dir)

    def _sft_then_grpo(self, base_dir, examples, grpo_sets, out_dir, settings, *, seed, work_dir) -> dict:
        from mergebench.evaluation.answers import boxed
        from mergebench.finetune.grpo import GRPOSettings, boxed_answer_reward, run_sft_then_grpo

        problems = [{"prompt": e["prompt"], "answer": boxed(e["completion"])} for d in grpo_sets for e in d.rows()]
        problems = [p for p in problems if p["answer"]]  # rows whose solution boxes no answer cannot be rewarded
        return run_sft_then_grpo(base_dir, examples, problems, out_dir, settings, GRPOSettings(), seed=seed,
                                 work_dir=work_dir, description=self.spec.name, reward=boxed_answer_reward)


STUDY_RECIPES: dict[str, tuple[tuple[HubSet, ...], tuple[HubSet, ...], str]] = {
    "instruction": ((HubSet("allenai/tulu-3-sft-personas-instruction-following", "messages"),), (),
                    "Tulu-3 persona IF (29.9K), SFT"),
    "math": ((HubSet("hkust-nlp/dart-math-hard", "query_response"),),
             (HubSet("AI-MO/NuminaMath-TIR", "messages"),),
             "DART-Math (591K) SFT; GRPO on NuminaMath-TIR (72.4K) after SFT for the 8B/9B bases"),
    "multilingual": ((HubSet("CohereForAI/aya_dataset", "inputs_targets",
                             keep=(("language", ("French", "Spanish", "German", "Russian")),)),),
                     (), "Aya, the study's languages (fr, es, de, ru), SFT"),
    "coding": ((HubSet("ise-uiuc/Magicoder-Evol-Instruct-110K", "instruction_response"),), (),
               "Magicoder Evol-Instruct (110K), SFT"),
    "safety": ((HubSet("allenai/wildguardmix", "prompt_response", config="wildguardtrain"),
                HubSet("allenai/wildjailbreak", "wildjailbreak", config="train",
                       load_kwargs=(("delimiter", "\t"), ("keep_default_na", False)))), (),
               "WildGuardMix train (86.76K) + WildJailbreak (261.56K), SFT"),
}
