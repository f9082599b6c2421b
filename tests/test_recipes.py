"""The mini recipes: what each trains on, that none of it is ever evaluated, and the MTL mixture.

Reads the data wheels through the standard cache ($MERGEBENCH_CACHE or ~/.cache/mergebench),
like ``test_data_splits``; builds no model.
"""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

from mergebench import plugin_manager
from mergebench.cache import ArtifactCache
from mergebench_builtins.data import eval_framework, splits, verifiable
from mergebench_builtins.recipes import mini
from mergebench_builtins.tasks.safety import harmbench_prompt

DOMAIN_RECIPES = ("instruction", "math", "multilingual", "coding", "safety")


@pytest.fixture(scope="module")
def context():
    return SimpleNamespace(cache=ArtifactCache(), seed=0)


def recipe(name: str, context):
    spec = plugin_manager.registries().recipes.get(name)
    return spec.load()(spec, context)


def evaluated_texts(cache) -> set[str]:
    """Every text an evaluation or validation task of the embedded suite may show a model."""
    texts: set[str] = set()
    for name, field in (("gsm8k", "question"), ("math", "problem"), ("mbpp", "text"), ("humaneval", "prompt"),
                        ("harmbench", "Behavior"), ("alpaca", "instruction"), ("ifeval", "prompt")):
        split = splits.SPLITS[name](cache)
        texts |= {d[field].strip() for d in split.eval + split.validation}
    for lang in ("fra", "spa", "deu", "rus"):
        texts |= {d["text"] for d in splits.multilingual_text(lang, cache).eval}
    return texts


@pytest.mark.parametrize("domain", DOMAIN_RECIPES)
def test_no_trained_example_contains_an_evaluated_item(domain, context):
    examples = recipe(f"mini-{domain}", context).trained_examples()
    assert len(examples) == 128
    evaluated = evaluated_texts(context.cache)
    leaks = [e for e in examples if any(t and (t in e["prompt"] or t in e["completion"]) for t in evaluated)]
    assert leaks == []


def test_every_domain_has_a_mini_recipe_registered_for_the_embedded_model():
    registries = plugin_manager.registries()
    model = registries.models.get("smollm2-135m-instruct")
    assert model.domains == ("instruction", "math", "multilingual", "coding", "safety")
    assert {e.recipe for e in model.experts} == {f"mini-{d}" for d in DOMAIN_RECIPES}
    assert model.mtl is not None and model.mtl.recipe == "mini-mtl"
    for domain in DOMAIN_RECIPES:
        spec = registries.recipes.get(f"mini-{domain}")
        assert spec.domain == domain and spec.stand_in_for, "a stand-in recipe names what it stands in for"


def test_verifiable_examples_pass_the_ifeval_checker_of_their_constraint(context):
    items = splits.alpaca(context.cache).train[:60]
    kept, rejected = verifiable.build_examples(items, 0, context.cache)
    assert len(kept) + len(rejected) == 60 and len(kept) >= 50
    assert {e["instruction_id"] for e in kept} == {c.instruction_id for c in verifiable.CONSTRAINTS}
    for example in kept:
        checker = verifiable._checker(example["instruction_id"], context.cache)
        description = checker.build_description(**example["kwargs"])
        assert example["prompt"].endswith(description)
        assert checker.check_following(example["completion"])
    assert verifiable.build_examples(items, 0, context.cache)[0] == kept, "deterministic: it is part of the expert's key"
    lowercase = next(e for e in kept if e["instruction_id"] == "change_case:english_lowercase")
    assert lowercase["completion"] == lowercase["completion"].lower()
    assert "in all lowercase letters" in lowercase["prompt"]


def test_short_answer_keeps_whole_sentences_of_the_first_paragraph():
    text = "**One** two three. Four five six seven. Eight nine ten eleven twelve.\n\nSecond paragraph."
    assert verifiable.short_answer(text, max_words=7) == "One two three. Four five six seven."
    assert verifiable.short_answer(text, max_words=2) == "One two"  # no whole sentence fits: cut the words
    assert verifiable.short_answer("A. B.\n\nC.") == "A. B."


def test_safety_recipe_follows_each_refusal_with_three_answers(context):
    examples = recipe("mini-safety", context).trained_examples()
    refusals = [e for e in examples if e["completion"] in mini.REFUSALS]
    assert len(refusals) == 32 and len(examples) - len(refusals) == 96
    assert [e in refusals for e in examples[:8]] == [True, False, False, False, True, False, False, False]
    behaviours = {harmbench_prompt(b) for b in splits.harmbench(context.cache).train}
    assert {e["prompt"] for e in refusals} <= behaviours
    benign = {d["instruction"].strip() for d in eval_framework.alpaca_instructions(context.cache)}
    assert {e["prompt"] for e in examples if e not in refusals} <= benign


def test_instruction_and_safety_recipes_draw_on_different_alpaca_items(context):
    instruction = {e["prompt"] for e in recipe("mini-instruction", context).trained_examples()}
    benign = {e["prompt"] for e in recipe("mini-safety", context).trained_examples() if e["completion"] not in mini.REFUSALS}
    assert not {p for p in instruction if any(p.startswith(b) for b in benign)}


def test_multilingual_recipe_covers_the_four_languages_equally(context):
    examples = recipe("mini-multilingual", context).trained_examples()
    counts = {name: sum(1 for e in examples if e["prompt"] == f"Write a paragraph in {name}.")
              for name in mini.LANGUAGE_NAMES.values()}
    assert counts == {"French": 32, "Spanish": 32, "German": 32, "Russian": 32}


def test_mtl_trains_on_every_domain_recipe_examples_once(context):
    mtl = recipe("mini-mtl", context)
    examples = mtl.trained_examples()
    parts = [recipe(f"mini-{d}", context).trained_examples() for d in DOMAIN_RECIPES]
    assert len(examples) == sum(map(len, parts)) == 640
    assert sorted(map(repr, examples)) == sorted(repr(e) for part in parts for e in part)
    assert examples[:5] == [part[0] for part in parts], "interleaved, so any prefix mixes every domain"
    assert mtl.fingerprint()["parts"] == [recipe(f"mini-{d}", context).fingerprint() for d in DOMAIN_RECIPES]


def test_samples_for_data_aware_methods_come_from_the_trained_examples(context):
    math = recipe("mini-math", context)
    drawn = math.samples(10, seed=3)
    assert drawn == random.Random(3).sample(math.trained_examples(), 10)
    assert len(math.samples(10_000)) == 128


def test_a_recipe_builds_its_examples_once_per_process(context, monkeypatch):
    """Each data-aware case draws samples of every expert and every expert's key hashes its examples:
    building them again each time (IFEval's checkers, seven MATH files) was most of a warm run."""
    built = []
    original = mini.MiniMath.training_examples
    monkeypatch.setattr(mini.MiniMath, "training_examples", lambda self: built.append(1) or original(self))
    monkeypatch.setattr(mini, "_TRAINED", {})
    first = recipe("mini-math", context).trained_examples()
    for seed in range(4):
        recipe("mini-math", context).samples(8, seed)
    digest = recipe("mini-math", context).fingerprint()["data_sha256"]
    assert built == [1]
    assert digest == mini.examples_digest(first)
    first.clear()  # a caller's list is its own
    assert len(recipe("mini-math", context).trained_examples()) == 128 and built == [1]
    elsewhere = SimpleNamespace(cache=ArtifactCache(context.cache.root / "does-not-exist"), seed=0)
    assert mini.MiniMath(plugin_manager.registries().recipes.get("mini-math"), elsewhere)._memo_key() != \
        recipe("mini-math", context)._memo_key(), "another cache's files are other data"
