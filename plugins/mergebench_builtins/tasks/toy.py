"""Toy tasks for the tiny test models: fixed strings per domain, scored by bits per byte.

They exist so the whole pipeline runs in seconds in tests; they measure nothing about real
capability and belong only to the ``tiny`` suite.
"""

from __future__ import annotations

import math

from mergebench.evaluation.api import GenerationRequest, LanguageModel, LoglikelihoodRequest, Task, TaskResult

TEXTS = {
    "instruction": ["Answer in exactly three words.", "Write the word hello in capitals."],
    "math": ["2 + 2 = 4", "7 * 6 = 42", "10 - 3 = 7"],
    "multilingual": ["Bonjour le monde", "Guten Morgen"],
    "coding": ["def add(a, b):\n    return a + b", "print('hi')"],
    "safety": ["I can't help with that.", "I won't do that."],
}


VALIDATION_TEXTS = {
    "instruction": ["Reply with one word.", "Use no commas at all.", "End with the word done.", "Write in capitals."],
    "math": ["3 + 5 = 8", "9 - 4 = 5", "6 * 7 = 42", "8 / 2 = 4"],
    "multilingual": ["Buenos dias", "Bonne nuit", "Guten Abend", "Dobryi den"],
    "coding": ["x = [i * i for i in range(3)]", "return sorted(items)", "import os", "def f(): pass"],
    "safety": ["I cannot assist with that.", "That request is unsafe.", "I must decline.", "Sorry, no."],
}


class ToyBPB(Task):
    supports_start = True

    def evaluate(self, lm: LanguageModel) -> TaskResult:
        texts = (VALIDATION_TEXTS if self.options.get("validation") else TEXTS)[self.spec.domain][self.start: self.stop]
        requests = [LoglikelihoodRequest("Text: ", t) for t in texts]
        scores = [-r.logprob / math.log(2) / len(q.continuation.encode()) for q, r in zip(requests, lm.loglikelihood(requests))]
        return self.result(scores, [{"text": t, "bpb": s} for t, s in zip(texts, scores)])


class ToyGeneration(Task):
    """Greedy generation of a few tokens; the score is the fraction of outputs that are non-empty."""

    generates = True

    def evaluate(self, lm: LanguageModel) -> TaskResult:
        texts = TEXTS[self.spec.domain][: self.limit]
        outputs = lm.generate([GenerationRequest(lm.chat_prompt([{"role": "user", "content": t}]), 4) for t in texts])
        scores = [float(bool(o)) for o in outputs]
        return self.result(scores, [{"prompt": t, "output": o} for t, o in zip(texts, outputs)])
