"""Final answers read out of model text: the last number (GSM8K) and the last ``\\boxed{...}`` (MATH).

Shared by the tasks that score exact match and the GRPO rewards that train on it, so a reward
and the metric it aims at can never disagree about what the answer was.
"""

from __future__ import annotations

import re

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def _normalize_number(value: str) -> str:
    value = value.replace(",", "").rstrip(".")
    if "." in value:
        value = value.rstrip("0").rstrip(".")
    return value


def final_number(text: str) -> str | None:
    """The first number after the last "answer is", else the last number in the text; commas dropped."""
    if "answer is" in text:
        after = _NUMBER.findall(text.rsplit("answer is", 1)[1])
        if after:
            return _normalize_number(after[0])
    numbers = _NUMBER.findall(text)
    return _normalize_number(numbers[-1]) if numbers else None


def boxed(text: str) -> str | None:
    """The contents of the last ``\\boxed{...}`` (nested braces balanced), whitespace removed; None if absent."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return re.sub(r"\s+", "", text[i + 1:j])
    return None
