"""MT-Bench-style judged chat: two turns a question, each rated 1-10 by a judge model (FastChat's single grading).

For each question the model answers turn 1 with its chat template, then turn 2 with its own
(stripped) turn-1 answer in the conversation, greedily, up to ``max_new_tokens`` (FastChat's
default 1024) and cut at the ``stop`` strings. Each turn is then graded by the judge of the run
(``context.judge``: :class:`~mergebench.evaluation.judge.JudgeSettings`) with FastChat's prompts
(:mod:`.mt_bench_prompts`): ``single-v1`` / ``single-math-v1`` for turn 1, their ``-multi-turn``
variants for turn 2, the ``math`` ones with reference answers for math, reasoning and coding.
Questions and references: :mod:`mergebench_builtins.data.mt_bench`.

**Score**: the mean rating over the judged turns (FastChat's "Average" of ``show_result.py``),
with the standard error of that mean; ``values`` holds the ratings in order (question 1 turn 1,
question 1 turn 2, question 2 turn 1, ...). ``extras`` has the turn-1 and turn-2 means, each
category's mean, standard error and count, and the bookkeeping below.

**Unparseable ratings**: a judgment with no ``[[x]]``/``[x]`` is asked for once more; if the second
judgment has none either, that turn is *excluded* from every mean (FastChat drops its score -1 the
same way), counted in ``extras["unparsed"]``, listed in ``extras["unparsed_items"]`` and kept in the
samples with ``rating: None``. ``extras["retried"]`` counts the judgments that needed the second ask.

**Options** of the spec: ``dataset``/``split``/``revision`` (hub questions), ``questions`` and
``reference_answers`` (local files; or ``MERGEBENCH_MT_BENCH_QUESTIONS`` /
``MERGEBENCH_MT_BENCH_REFERENCES``), ``max_new_tokens``, ``stop``, ``judge_max_tokens`` (2048, as
FastChat asks GPT-4), ``judge_parallel`` (requests in flight, default 4).

The cache key (:meth:`MTBench.fingerprint`) holds the data's identity, the generation settings,
the judge's model name and the prompts' version; not the judge's URL, and never its API key.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any

from mergebench import progress
from mergebench.errors import JudgeError
from mergebench.evaluation.api import GenerationRequest, LanguageModel, Task, TaskResult, mean_stderr
from mergebench.evaluation.judge import JudgeClient, JudgeSettings, parse_rating
from mergebench_builtins.data import mt_bench as data
from mergebench_builtins.tasks.mt_bench_prompts import NEED_REF_CATS, PROMPT_VERSION, choose, judge_messages

UNPARSED_POLICY = "asked once more, then excluded from the means (FastChat drops score -1) and counted here"


@dataclass(frozen=True)
class Judgment:
    question: data.Question
    turn: int  # 1 or 2
    prompt: str  # the judge prompt's name
    reference: str  # where the reference came from: reference_answers, question, none, or "" (not needed)
    messages: list[dict[str, str]]


@dataclass(frozen=True)
class Grade:
    rating: float | None
    judgment: str
    attempts: int


class MTBench(Task):
    generates = True

    # -- settings ----------------------------------------------------------------------
    def judge_settings(self) -> JudgeSettings:
        return getattr(self.context, "judge", None) or JudgeSettings.from_env()

    def generation(self) -> dict[str, Any]:
        return {"max_new_tokens": int(self.options.get("max_new_tokens", 1024)),
                "stop": list(self.options.get("stop", ())), "greedy": True}

    def question_file(self):
        return data.question_file(self.options.get("questions"), dataset=self.options.get("dataset", data.HUB_DATASET),
                                  split=self.options.get("split", "train"))

    def fingerprint(self) -> dict[str, Any]:
        questions = self.question_file()
        references = data.reference_file(self.options.get("reference_answers"), questions)
        settings = self.judge_settings()
        return {
            **super().fingerprint(),
            "questions": data.file_identity(questions) if questions else
            {"dataset": self.options.get("dataset", data.HUB_DATASET), "split": self.options.get("split", "train"),
             "revision": self.options.get("revision")},
            "reference_answers": data.file_identity(references) if references else None,
            "generation": self.generation(),
            "judge": {"model": settings.model, "prompts": PROMPT_VERSION, "temperature": 0,
                      "max_tokens": int(self.options.get("judge_max_tokens", 2048)), "unparsed": UNPARSED_POLICY},
        }

    # -- evaluation --------------------------------------------------------------------
    def evaluate(self, lm: LanguageModel) -> TaskResult:
        settings = self.judge_settings()
        settings.require(self.spec.name)
        client = JudgeClient(settings)
        client.probe()  # an unreachable judge fails here, before any generation
        questions_file = self.question_file()
        questions = data.load_questions(questions_file, dataset=self.options.get("dataset", data.HUB_DATASET),
                                        split=self.options.get("split", "train"), revision=self.options.get("revision"))
        questions = questions[self.start: self.limit]
        reference_path = data.reference_file(self.options.get("reference_answers"), questions_file)
        references = data.load_reference_answers(reference_path) if reference_path else {}

        first, second = self.answer(lm, questions)
        judgments = [j for q, a1, a2 in zip(questions, first, second) for j in self.judgments(q, (a1, a2), references)]
        self.note_references(judgments)
        grades = self.grade(client, judgments)
        return self.summarize(judgments, grades, list(zip(first, second)), settings)

    def answer(self, lm: LanguageModel, questions: list[data.Question]) -> tuple[list[str], list[str]]:
        """Both turns' answers; turn 2 sees the model's own turn-1 answer (stripped, as FastChat keeps it)."""
        settings = self.generation()

        def requests(conversations):
            return [GenerationRequest(lm.chat_prompt(c), settings["max_new_tokens"], tuple(settings["stop"]))
                    for c in conversations]

        first = [a.strip() for a in lm.generate(requests([[{"role": "user", "content": q.turns[0]}] for q in questions]))]
        second = [a.strip() for a in lm.generate(requests([
            [{"role": "user", "content": q.turns[0]}, {"role": "assistant", "content": a},
             {"role": "user", "content": q.turns[1]}] for q, a in zip(questions, first)]))]
        return first, second

    def judgments(self, question: data.Question, answers: tuple[str, str], references: dict) -> list[Judgment]:
        reference, source = None, ""
        if question.category in NEED_REF_CATS:
            if question.question_id in references:
                reference, source = references[question.question_id], "reference_answers"
            elif question.reference:
                reference, source = question.reference, "question"
            else:
                source = "none"
        found = []
        for turn in (1, 2):
            prompt = choose(multi_turn=turn == 2, with_reference=reference is not None)
            found.append(Judgment(question, turn, prompt.name, source,
                                  judge_messages(prompt, question.turns, answers, reference)))
        return found

    def note_references(self, judgments: list[Judgment]) -> None:
        short = len({j.question.question_id for j in judgments if j.reference == "question"})
        none = len({j.question.question_id for j in judgments if j.reference == "none"})
        if short or none:
            progress.note(f"  {self.spec.name}: {short} reference-category question(s) graded against the question "
                          f"file's short references and {none} without a reference (FastChat uses "
                          f"reference_answer/gpt-4.jsonl: set {data.REFERENCES_ENV})")

    def grade(self, client: JudgeClient, judgments: list[Judgment]) -> list[Grade]:
        """Every judgment, ``judge_parallel`` requests at a time; the first failure stops the rest."""
        max_tokens = int(self.options.get("judge_max_tokens", 2048))
        grades: list[Grade | None] = [None] * len(judgments)
        executor = ThreadPoolExecutor(max_workers=max(1, int(self.options.get("judge_parallel", 4))))
        try:
            with progress.progress(f"judge ({client.settings.model})", total=len(judgments), unit="judgments") as bar:
                futures = {executor.submit(_grade_one, client, j.messages, max_tokens): i for i, j in enumerate(judgments)}
                for future in as_completed(futures):
                    grades[futures[future]] = future.result()
                    bar.advance()
        except BaseException:
            executor.shutdown(wait=True, cancel_futures=True)
            raise
        executor.shutdown()
        return grades

    def summarize(self, judgments: list[Judgment], grades: list[Grade], answers: list[tuple[str, str]],
                  settings: JudgeSettings) -> TaskResult:
        answer_of = {j.question.question_id: a for j, a in zip(judgments[::2], answers)}
        samples = [{"question_id": j.question.question_id, "category": j.question.category, "turn": j.turn,
                    "question": j.question.turns[j.turn - 1], "answer": answer_of[j.question.question_id][j.turn - 1],
                    "judge_prompt": j.prompt, "reference": j.reference, "rating": g.rating, self.spec.metric: g.rating,
                    "judgment": g.judgment,
                    "attempts": g.attempts} for j, g in zip(judgments, grades)]
        rated = [(j, g.rating) for j, g in zip(judgments, grades) if g.rating is not None]
        if not rated:
            example = grades[0].judgment[:200] if grades else ""
            raise JudgeError(f"the judge {settings.model!r} gave no parseable rating ([[x]] or [x]) in {len(grades)} "
                             f"judgment(s), each asked twice; the first said: {example!r}")
        categories = {}
        for category in dict.fromkeys(j.question.category for j, _ in rated):
            mean, stderr = mean_stderr([r for j, r in rated if j.question.category == category])
            categories[category] = {"mean": mean, "stderr": stderr, "n": sum(1 for j, _ in rated if j.question.category == category)}
        turns = {f"turn_{t}": (mean_stderr([r for j, r in rated if j.turn == t])[0] if any(j.turn == t for j, _ in rated)
                               else None) for t in (1, 2)}
        unparsed = [{"question_id": j.question.question_id, "turn": j.turn}
                    for j, g in zip(judgments, grades) if g.rating is None]
        references = {}
        for j in judgments[::2]:
            if j.reference:
                references[j.reference] = references.get(j.reference, 0) + 1
        return self.result(
            [r for _, r in rated], samples,
            **turns, categories=categories, judge_model=settings.model, judge_prompts=PROMPT_VERSION,
            judgments=len(judgments), unparsed=len(unparsed), unparsed_items=unparsed, unparsed_policy=UNPARSED_POLICY,
            retried=sum(1 for g in grades if g.attempts > 1), references=references, generation=self.generation(),
        )


def _grade_one(client: JudgeClient, messages: list[dict[str, str]], max_tokens: int) -> Grade:
    judgment = client.complete(messages, max_tokens=max_tokens)
    rating = parse_rating(judgment)
    if rating is not None:
        return Grade(rating, judgment, 1)
    judgment = client.complete(messages, max_tokens=max_tokens)  # once more, then it counts as unparsed
    return Grade(parse_rating(judgment), judgment, 2)
