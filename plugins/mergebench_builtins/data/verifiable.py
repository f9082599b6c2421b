"""Verifiable-instruction training data for the instruction-following expert, checked by IFEval's checkers.

The study trains its instruction-following expert on Tulu-3's persona IF data: prompts with
verifiable constraints ("answer in all lowercase", "end with this phrase") and answers that meet
them. That set is not offline, so the mini recipe builds the same kind of data from AlpacaEval's
*training* instructions (never the over-refusal evaluation ones) and their GPT-4 reference
answers: each item gets one constraint from :data:`CONSTRAINTS`, the constraint's wording comes
from the IFEval instruction class itself (``build_description``), the answer is shortened and
rewritten to satisfy it, and the rewritten answer is kept only if the same class's
``check_following`` accepts it. No IFEval prompt is used, so nothing overlaps the IFEval test or
validation items; only the constraint *types* are shared, as they are between Tulu-3 and IFEval.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from typing import Any, Callable

END_PHRASES = ("Is there anything else I can help with?", "Let me know if you have additional questions.",
               "Hope this helps.")
MAX_WORDS = 40
"""Answers are cut to whole sentences within this many words: the mini IFEval task generates 64 tokens."""


def short_answer(text: str, max_words: int = MAX_WORDS) -> str:
    """The reference answer's first paragraph, cut to the whole sentences that fit ``max_words``."""
    paragraph = next((p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()), "")
    paragraph = re.sub(r"\s+", " ", re.sub(r"[*#`]", "", paragraph))
    kept: list[str] = []
    for sentence in re.split(r"(?<=[.!?])\s+", paragraph):
        if len(" ".join(kept + [sentence]).split()) > max_words:
            break
        kept.append(sentence)
    return " ".join(kept) if kept else " ".join(paragraph.split()[:max_words])


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text) if s]


def _bullets(text: str, rng: random.Random) -> tuple[dict, str]:
    sentences = _sentences(text)
    count = max(2, min(3, len(sentences)))
    if len(sentences) < count:
        words = text.split()
        half = len(words) // 2
        sentences = [" ".join(words[:half]), " ".join(words[half:])]
    groups = [sentences[i::count] for i in range(count)]
    return {"num_bullets": count}, "\n".join("* " + " ".join(g) for g in groups)


def _fewer_words(text: str, rng: random.Random) -> tuple[dict, str]:
    limit = rng.choice((20, 30, 40))
    kept = short_answer(text, limit - 1)
    return {"num_words": limit, "relation": "less than"}, kept


def _title(text: str, rng: random.Random) -> tuple[dict, str]:
    words = re.sub(r"[^\w\s]", "", text).split()[:3]
    return {}, f"<<{' '.join(words).title() or 'Answer'}>>\n{text}"


def _highlight(text: str, rng: random.Random) -> tuple[dict, str]:
    first, _, rest = text.partition(" ")
    return {"num_highlights": 1}, f"*{first}* {rest}".strip()


@dataclass(frozen=True)
class Constraint:
    instruction_id: str
    rewrite: Callable[[str, random.Random], tuple[dict, str]]
    """``(kwargs for build_description, rewritten answer)`` from a short answer."""


CONSTRAINTS: tuple[Constraint, ...] = (
    Constraint("change_case:english_lowercase", lambda t, r: ({}, t.lower())),
    Constraint("change_case:english_capital", lambda t, r: ({}, t.upper())),
    Constraint("punctuation:no_comma", lambda t, r: ({}, t.replace(",", ""))),
    Constraint("startend:quotation", lambda t, r: ({}, f'"{t}"')),
    Constraint("startend:end_checker", lambda t, r: (lambda p: ({"end_phrase": p}, f"{t} {p}"))(r.choice(END_PHRASES))),
    Constraint("detectable_format:title", _title),
    Constraint("detectable_content:postscript",
               lambda t, r: ({"postscript_marker": "P.S."}, f"{t}\n\nP.S. I hope this answer is useful.")),
    Constraint("detectable_format:json_format", lambda t, r: ({}, json.dumps({"answer": t}))),
    Constraint("length_constraints:number_words", _fewer_words),
    Constraint("detectable_format:number_bullet_lists", _bullets),
    Constraint("detectable_format:number_highlighted_sections", _highlight),
)


def _checker_classes(cache) -> dict[str, type]:
    """lm-eval's IFEval instruction classes by id, ready to use (once per call of :func:`build_examples`)."""
    import langdetect

    from mergebench_builtins.data import punkt

    # The language checks use langdetect, which samples: unseeded, the same answer passes on one run
    # and fails on the next, and the expert's training set (part of its cache key) would drift.
    langdetect.DetectorFactory.seed = 0
    punkt.install(cache)  # before lm-eval's IFEval module asks NLTK to download punkt_tab
    from lm_eval.tasks.ifeval import instructions_registry

    return instructions_registry.INSTRUCTION_DICT


def _checker(instruction_id: str, cache):
    """A fresh checker of one instruction (its ``build_description`` keeps state, so never share one)."""
    return _checker_classes(cache)[instruction_id](instruction_id)


def build_examples(items: list[dict], seed: int, cache) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(kept, rejected)`` training examples from AlpacaEval items (``instruction``, ``output``).

    Item ``i`` gets constraint ``i mod len(CONSTRAINTS)`` after a seeded shuffle of the items, so
    every constraint type is equally represented. Each kept example carries its
    ``instruction_id`` and ``kwargs`` so it can be re-checked.
    """
    rng = random.Random(f"mergebench:verifiable:{seed}")
    order = list(items)
    rng.shuffle(order)
    kept, rejected = [], []
    classes = _checker_classes(cache)
    for index, item in enumerate(order):
        constraint = CONSTRAINTS[index % len(CONSTRAINTS)]
        answer = short_answer(item["output"])
        kwargs, completion = constraint.rewrite(answer, rng)
        checker = classes[constraint.instruction_id](constraint.instruction_id)
        description = checker.build_description(**kwargs)
        example = {"prompt": f"{item['instruction'].strip()} {description}", "completion": completion,
                   "instruction_id": constraint.instruction_id, "kwargs": kwargs, "source_id": item.get("id")}
        (kept if answer and checker.check_following(completion) else rejected).append(example)
    return kept, rejected
