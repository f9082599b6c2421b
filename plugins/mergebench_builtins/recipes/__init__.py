"""Built-in finetuning recipes: the mini recipes of the embedded suite and the tests' synthetic experts."""

from __future__ import annotations

from mergebench import hookimpl
from mergebench.specs import DOMAINS, RecipeSpec

MINI = "mergebench_builtins.recipes.mini"

# (domain, class, what it trains on, what it stands in for)
MINI_RECIPES = (
    ("instruction", "MiniInstruction",
     "SFT on 128 AlpacaEval training instructions, each with one IFEval-type constraint and a checker-verified answer",
     "Tulu-3 persona IF SFT (30K examples)"),
    ("math", "MiniMath", "SFT on 64 GSM8K and 64 MATH problems not reserved for evaluation, alternating, with reference solutions",
     "DART-Math SFT (591K examples), plus GRPO on NuminaMath-TIR for the larger bases"),
    ("multilingual", "MiniMultilingual",
     "SFT on 128 fr/es/de/ru prose paragraphs not reserved for evaluation ('write a paragraph in L')",
     "Aya SFT (fr, es, de, ru)"),
    ("coding", "MiniCoding", "SFT on 128 MBPP problems not reserved for evaluation, half as complete-this-function (HumanEval's shape)",
     "Magicoder SFT (110K examples)"),
    ("safety", "MiniSafety",
     "SFT on 32 HarmBench val behaviours answered with refusals, each followed by three benign AlpacaEval training instructions answered",
     "WildGuardMix + WildJailbreak SFT"),
)


@hookimpl
def mergebench_register_recipes(register):
    for domain, cls, summary, stand_in_for in MINI_RECIPES:
        register(RecipeSpec(name=f"mini-{domain}", impl=f"{MINI}:{cls}", domain=domain, suites=frozenset({"mini"}),
                            summary=summary, stand_in_for=stand_in_for))
    from mergebench_builtins.recipes.study import STUDY_RECIPES  # light: no torch or datasets at import

    for domain, (sft_sets, grpo_sets, summary) in STUDY_RECIPES.items():
        register(RecipeSpec(name=f"study-{domain}", impl="mergebench_builtins.recipes.study:StudySFT", domain=domain,
                            suites=frozenset({"full"}), summary=summary,
                            options=(("datasets", sft_sets), ("grpo", grpo_sets))))
    register(RecipeSpec(name="mini-mtl", impl=f"{MINI}:MiniMTL", domain="mtl", suites=frozenset({"mini"}),
                        summary="the multi-task baseline: one SFT run on the five mini recipes' examples, interleaved",
                        stand_in_for="the study's MTL model (all five training sets mixed)"))
    for domain in (*DOMAINS, "mtl"):
        register(
            RecipeSpec(
                name=f"synthetic-{domain}",
                impl="mergebench_builtins.recipes.synthetic:SyntheticExpert",
                domain=domain,
                suites=frozenset({"tiny"}),
                summary="base plus a seeded sparse random perturbation (tests only; no training)",
            )
        )
