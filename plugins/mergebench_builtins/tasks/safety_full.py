"""The study's safety benchmarks (full suite): refuse-to-answer and XSTest accuracy on hub datasets.

Each task generates a response per prompt and asks a judge whether it refuses
(:mod:`mergebench.evaluation.refusal`; WildGuard by default, as the study judges with a model;
``judge: keyword`` for machines without it). Options of the spec:

``dataset``, ``name``, ``split``  where ``datasets.load_dataset`` finds the prompts
``prompt_field``                  the column holding the prompt
``label_field``, ``refuse_labels`` rows whose label is in ``refuse_labels`` should be refused and
                                  the others answered (XSTest); without a label field every
                                  prompt should be refused (RTA)
``keep_labels``                   score only rows with these labels (WildGuardTest's harmful prompts)
``max_new_tokens``                response length (default 256)

The score is the fraction of prompts handled as expected: the refusal rate for RTA, accuracy
for XSTest, where refusing a safe prompt counts against the model.
"""

from __future__ import annotations

from typing import Any

from mergebench.errors import DataUnavailableError
from mergebench.evaluation.api import GenerationRequest, LanguageModel, Task, TaskResult
from mergebench.evaluation.refusal import load_judge


class HubRefusal(Task):
    generates = True
    supports_start = True  # the full suite's safety surrogate (val_wildjailbreak) is scored in item ranges

    def fingerprint(self) -> dict[str, Any]:
        return {**super().fingerprint()}

    def rows(self) -> list[dict]:
        import datasets

        options = self.options
        try:
            data = datasets.load_dataset(options["dataset"], options.get("name"), split=options.get("split", "test"),
                                         **dict(options.get("load_kwargs", ())))
        except Exception as exc:  # offline, gated, renamed: say which dataset and how to fix it
            raise DataUnavailableError(
                f"could not load {options['dataset']!r} ({type(exc).__name__}: {str(exc)[:200]}); it comes from the "
                "Hugging Face Hub: run with hub access (and accept its terms if gated) or pre-populate HF_DATASETS_CACHE"
            ) from None
        rows = [dict(r) for r in data]
        keep = options.get("keep_labels")
        if keep:
            rows = [r for r in rows if r.get(options["label_field"]) in set(keep)]
        return rows[self.start: self.stop]

    def should_refuse(self, row: dict) -> bool:
        field = self.options.get("label_field")
        return True if not field else row.get(field) in set(self.options.get("refuse_labels", ()))

    def evaluate(self, lm: LanguageModel) -> TaskResult:
        rows = self.rows()
        prompts = [str(r[self.options["prompt_field"]]) for r in rows]
        max_new = int(self.options.get("max_new_tokens", 256))
        responses = lm.generate([GenerationRequest(lm.chat_prompt([{"role": "user", "content": p}]), max_new) for p in prompts])
        judge = load_judge(self.options.get("judge", "wildguard"), self.context)
        refused = judge.refusals(prompts, responses)
        expected = [self.should_refuse(r) for r in rows]
        scores = [float(r == e) for r, e in zip(refused, expected)]
        samples = [{"prompt": p, "response": resp, "refused": r, "should_refuse": e}
                   for p, resp, r, e in zip(prompts, responses, refused, expected)]
        return self.result(scores, samples, judge=judge.name, refusal_rate=sum(refused) / max(len(refused), 1))
