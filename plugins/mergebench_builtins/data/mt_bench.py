"""MT-Bench questions and reference answers: FastChat's files, a local copy of the hub dataset, or the hub.

**Questions**, FastChat's ``question.jsonl`` format (``question_id``, ``category``, ``turns``: two
strings, optional ``reference``: two strings), from the first of

1. a file named by the task option ``questions`` or ``MERGEBENCH_MT_BENCH_QUESTIONS``;
2. ``DIR/lighteval/mt-bench/default/train.jsonl`` under a data root (``MERGEBENCH_DATA_ROOT``,
   the layout of :mod:`mergebench.finetune.hub_data`);
3. the hub dataset :data:`HUB_DATASET` through ``datasets``.

``lighteval/mt-bench`` is FastChat's ``question.jsonl`` as a dataset (80 rows, the same fields
and ids). ``HuggingFaceH4/mt_bench_prompts`` is not used: it renames ``turns`` and replaces
``question_id`` by a hash of the prompt, so FastChat's reference answers could not be matched.

**Reference answers**, FastChat's ``reference_answer/gpt-4.jsonl`` format (``question_id``,
``choices[0].turns``: two strings), from a file named by the task option ``reference_answers`` or
``MERGEBENCH_MT_BENCH_REFERENCES``, else ``reference_answer/gpt-4.jsonl`` beside the question file.
FastChat grades its reference categories against these answers only; where there is none, the
task falls back to the question's own ``reference`` field (FastChat's short human-written
references), then to the general prompt, and counts each case (see the task).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergebench.errors import DataUnavailableError
from mergebench.wheels import sha256_of

HUB_DATASET = "lighteval/mt-bench"
QUESTIONS_ENV = "MERGEBENCH_MT_BENCH_QUESTIONS"
REFERENCES_ENV = "MERGEBENCH_MT_BENCH_REFERENCES"
REFERENCES_BESIDE = Path("reference_answer") / "gpt-4.jsonl"


@dataclass(frozen=True)
class Question:
    question_id: Any
    category: str
    turns: tuple[str, str]
    reference: tuple[str, str] | None = None  # the question's own short references, when it has them


def _pair(value: Any, what: str, where: str) -> tuple[str, str]:
    if not (isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, str) for v in value)):
        raise DataUnavailableError(f"{where}: {what} must be a list of two strings (one per turn), got {value!r:.120}")
    return value[0], value[1]


def parse_question(row: dict, where: str) -> Question:
    missing = [k for k in ("question_id", "category", "turns") if k not in row]
    if missing:
        raise DataUnavailableError(f"{where}: missing {', '.join(missing)} (FastChat's question.jsonl has "
                                   "question_id, category, turns and optionally reference)")
    reference = row.get("reference") or None
    return Question(row["question_id"], str(row["category"]), _pair(row["turns"], "turns", where),
                    _pair(reference, "reference", where) if reference else None)


def _read_jsonl(path: Path) -> list[tuple[str, dict]]:
    if not path.is_file():
        raise DataUnavailableError(f"no such file: {path}")
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                rows.append((f"{path}:{number}", json.loads(line)))
            except json.JSONDecodeError as exc:
                raise DataUnavailableError(f"{path}:{number}: not JSON ({exc.msg})") from None
    return rows


def load_question_file(path: Path) -> list[Question]:
    return [parse_question(row, where) for where, row in _read_jsonl(path)]


def load_reference_answers(path: Path) -> dict[Any, tuple[str, str]]:
    """``question_id`` → the two reference turns, from a FastChat model-answer file."""
    answers = {}
    for where, row in _read_jsonl(path):
        try:
            turns = row["choices"][0]["turns"]
        except (KeyError, IndexError, TypeError):
            raise DataUnavailableError(f"{where}: a reference answer needs question_id and choices[0].turns "
                                       "(FastChat's reference_answer/gpt-4.jsonl format)") from None
        answers[row.get("question_id")] = _pair(turns, "choices[0].turns", where)
    return answers


def question_file(path: str | None, *, dataset: str = HUB_DATASET, split: str = "train") -> Path | None:
    """The local question file: ``path``, else ``$MERGEBENCH_MT_BENCH_QUESTIONS``, else a data root's copy of
    ``dataset``; None means the hub."""
    from mergebench.finetune.hub_data import data_roots, local_file

    given = path or os.environ.get(QUESTIONS_ENV)
    return Path(given).expanduser() if given else local_file(dataset, None, split, data_roots())


def load_questions(file: Path | None, *, dataset: str = HUB_DATASET, split: str = "train",
                   revision: str | None = None) -> list[Question]:
    """The questions of ``file``, or of the hub dataset when ``file`` is None."""
    if file is not None:
        return load_question_file(file)
    try:
        import datasets

        rows = datasets.load_dataset(dataset, split=split, revision=revision)
    except Exception as exc:  # offline, renamed, no datasets: say which and how to do without the hub
        from mergebench.finetune.hub_data import data_roots

        why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
        where = ", ".join(str(r) for r in data_roots()) or "MERGEBENCH_DATA_ROOT not set"
        raise DataUnavailableError(
            f"cannot load the MT-Bench questions {dataset!r} (split {split!r}) from the Hugging Face Hub ({why}). "
            f"Without the hub, point {QUESTIONS_ENV} (or the task option questions) at FastChat's "
            "fastchat/llm_judge/data/mt_bench/question.jsonl, or put it at "
            f"DIR/{dataset}/default/{split}.jsonl and set MERGEBENCH_DATA_ROOT=DIR (looked in: {where})"
        ) from None
    return [parse_question(dict(row), f"{dataset} row {i}") for i, row in enumerate(rows)]


def reference_file(path: str | None, questions: Path | None) -> Path | None:
    """The reference-answer file: ``path``, else ``$MERGEBENCH_MT_BENCH_REFERENCES``, else
    ``reference_answer/gpt-4.jsonl`` beside the question file; None when there is none."""
    given = path or os.environ.get(REFERENCES_ENV)
    if given:
        return Path(given).expanduser()
    beside = questions.parent / REFERENCES_BESIDE if questions is not None else None
    return beside if beside is not None and beside.is_file() else None


def file_identity(file: Path) -> dict[str, str]:
    """What names a data file in cache keys: its name and content hash (not where it lies)."""
    if not file.is_file():
        raise DataUnavailableError(f"no such file: {file}")
    return {"file": file.name, "sha256": sha256_of(file)}
