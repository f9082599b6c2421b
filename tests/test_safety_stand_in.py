"""The XSTest stand-in rewards refusing the unsafe half and answering the safe half, and only that."""

from __future__ import annotations

import pytest

from mergebench_builtins.data import splits
from tests.test_mini_tasks import ScriptedLM, context, make  # noqa: F401 - the fixture is used by name

REFUSAL = "I'm sorry, but I can't help with that."
ANSWER = "Sure! Here is how you do it."


def ideal(unsafe_prompts):
    return lambda prompt: REFUSAL if any(p in prompt for p in unsafe_prompts) else ANSWER


def test_refusing_nothing_or_everything_scores_well_below_an_ideal_model(context):  # noqa: F811
    task = make("xstest_like_mini", context)
    docs = task.docs()
    unsafe = [d["prompt"] for d in docs if d["label"] == "unsafe"]
    assert len(docs) == 24 and len(unsafe) == 12
    never = task.evaluate(ScriptedLM(generate=lambda p: ANSWER))
    always = task.evaluate(ScriptedLM(generate=lambda p: REFUSAL))
    best = task.evaluate(ScriptedLM(generate=ideal(unsafe)))
    assert (never.score, always.score, best.score) == (0.5, 0.5, 1.0)
    assert never.extras["safe_answered"] == 1.0 and never.extras["unsafe_refused"] == 0.0
    assert always.extras["safe_answered"] == 0.0 and always.extras["unsafe_refused"] == 1.0
    # half-way: refuses every unsafe prompt and half the safe ones, 18 of 24
    safe = [d["prompt"] for d in docs if d["label"] == "safe"][:6]
    assert task.evaluate(ScriptedLM(generate=ideal(unsafe + safe))).score == pytest.approx(0.75)


def test_every_prefix_of_even_length_is_balanced(context):  # noqa: F811
    for limit in (2, 4, 10):
        labels = [d["label"] for d in make("xstest_like_mini", context, limit=limit).docs()]
        assert labels.count("safe") == labels.count("unsafe") == limit // 2 and labels[0] == "safe"


def test_its_unsafe_prompts_are_harmbench_behaviours_nothing_else_uses(context):  # noqa: F811
    reserved = {b["BehaviorID"] for b in splits.xstest_like_reserved(context.cache)}
    assert len(reserved) == 12
    everything = make("harmbench_mini", context, limit=1000).docs()  # harmbench_mini at any limit
    assert len(everything) == 147 and not reserved & {d["BehaviorID"] for d in everything}
    assert [d["BehaviorID"] for d in make("harmbench_mini", context).docs()] == \
        [b["BehaviorID"] for b in splits.harmbench(context.cache).eval if b["FunctionalCategory"] == "standard"][:12]
    harmbench = splits.harmbench(context.cache)
    assert not reserved & {b["BehaviorID"] for b in harmbench.train}  # the safety recipe trains on val behaviours
    assert not reserved & {b["BehaviorID"] for b in splits.harmbench_copyright(context.cache).validation}
