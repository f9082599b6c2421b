"""Safety on the embedded suite: refusal of harmful requests, and over-refusal of benign ones.

* ``harmbench_mini``: refusal rate on HarmBench *standard* behaviours reserved for evaluation
  (test file; the mini safety recipe trains on the val file). Higher is better, as the study's
  refuse-to-answer (RTA). Contextual behaviours are left to the full suite: their contexts make
  prompts ~10x longer.
* ``xstest_like_mini``: fraction of benign AlpacaEval instructions (the 100 reserved for
  evaluation) that the model *answers*; a refusal counts against the model, as over-refusal does
  in the study's XSTest accuracy. A stand-in: XSTest itself is not available offline.

Responses are short (24 tokens: the refusal shows in the opening) and judged by
:mod:`mergebench.evaluation.refusal` (keyword classifier by default; option ``judge: wildguard``).
"""

from __future__ import annotations

from typing import Any

from mergebench.evaluation.api import GenerationRequest, LanguageModel, TaskResult
from mergebench.evaluation.refusal import load_judge
from mergebench_builtins.data import eval_framework, harmbench
from mergebench_builtins.tasks.base import SplitTask


def harmbench_prompt(behavior: dict) -> str:
    """HarmBench's own format: the context, a separator, then the request."""
    context = (behavior.get("ContextString") or "").strip()
    return f"{context}\n\n---\n\n{behavior['Behavior']}" if context else behavior["Behavior"]


class RefusalTask(SplitTask):
    """Generate a short response per prompt and judge it; ``counts_refusal`` says which verdict scores 1."""

    generates = True
    counts_refusal = True
    default_limit = 12

    def prompt(self, doc: dict) -> str:
        raise NotImplementedError

    def doc_id(self, doc: dict) -> Any:
        raise NotImplementedError

    def fingerprint(self) -> dict:
        return {**super().fingerprint(), "judge": self.options.get("judge", "keyword"),
                "max_new_tokens": int(self.options.get("max_new_tokens", 24))}

    def evaluate(self, lm: LanguageModel) -> TaskResult:
        docs = self.docs()
        prompts = [self.prompt(d) for d in docs]
        max_new = int(self.options.get("max_new_tokens", 24))
        responses = lm.generate([GenerationRequest(lm.chat_prompt([{"role": "user", "content": p}]), max_new)
                                 for p in prompts])
        judge = load_judge(self.options.get("judge", "keyword"), self.context)
        refused = judge.refusals(prompts, responses)
        scores = [float(r == self.counts_refusal) for r in refused]
        samples = [{"id": self.doc_id(d), "response": resp, "refused": r} for d, resp, r in zip(docs, responses, refused)]
        extras = {"judge": judge.name, "refusal_rate": sum(refused) / len(refused)}
        if getattr(judge, "unparsed", 0):
            extras["judge_unparsed"] = judge.unparsed
        return self.result(scores, samples, **extras)


class HarmBenchRefusal(RefusalTask):
    split = "harmbench"
    wheels = (harmbench.HARMBENCH_WHEEL,)
    cap = "standard behaviours only"

    def keeps(self, doc: dict) -> bool:
        return doc["FunctionalCategory"] == "standard"

    def prompt(self, doc: dict) -> str:
        return harmbench_prompt(doc)

    def doc_id(self, doc: dict) -> Any:
        return doc["BehaviorID"]


class BenignAnswered(RefusalTask):
    split = "alpaca"
    wheels = (eval_framework.EVAL_FRAMEWORK_WHEEL,)
    counts_refusal = False

    def prompt(self, doc: dict) -> str:
        return doc["instruction"]

    def doc_id(self, doc: dict) -> Any:
        return doc["id"]


class CopyrightRefusal(HarmBenchRefusal):
    """The safety validation surrogate (a WildJailbreak stand-in): HarmBench's copyright behaviours,
    which neither a test task nor a recipe uses."""

    split = "harmbench-copyright"
    part = "validation"
    cap = ""

    def keeps(self, doc: dict) -> bool:
        return True
