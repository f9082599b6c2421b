"""Case results with per-item values of known truth, for the interval, pairing and gate tests."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from mergebench.results import CaseResult, Score, ratio
from mergebench.results.compact import as_float32
from mergebench.results.items import ItemValues


def _score(values: Sequence[float] | None, clusters: Sequence[int] | None = None) -> Score | None:
    if values is None:
        return None
    array = np.asarray(as_float32(values))
    se = float(array.std(ddof=1) / np.sqrt(array.size)) if array.size > 1 else 0.0
    return Score(float(array.mean()), se, int(array.size))


def item_case(task: str, domain: str, merged: Sequence[float], expert: Sequence[float] | None = None,
              base: Sequence[float] | None = None, *, method: str = "soup", model: str = "m", higher: bool = True,
              fingerprint: str | None = None, clusters: Sequence[int] | None = None) -> CaseResult:
    """One case whose scores are the means of the given per-item values (float32, as a results file stores them)."""
    reference = "base" if domain == "general" else "expert"
    scores = {"merged": _score(merged), "expert": _score(expert), "base": _score(base)}
    ref = scores[reference]
    items = ItemValues(fingerprint or f"items-of-{task}", as_float32(merged),
                       None if expert is None else as_float32(expert), None if base is None else as_float32(base),
                       None if clusters is None else tuple(clusters))
    return CaseResult(
        case_id=f"{model}-{method}-{task}", model=model, method=method, task=task, domain=domain, metric="acc",
        higher_is_better=higher, params={}, merged=scores["merged"], expert=scores["expert"], base=scores["base"],
        reference=reference, normalized=ratio(scores["merged"].score, ref.score if ref else None, higher),
        merge_seconds=1.0, items=items,
    )


def binary(rng: np.random.Generator, n: int, p: float) -> np.ndarray:
    return (rng.random(n) < p).astype(float)
