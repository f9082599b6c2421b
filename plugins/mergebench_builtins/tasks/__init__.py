"""Built-in evaluation tasks: the study's suite (lm-eval by name), the embedded mini suite, validation surrogates.

Suites: ``full`` (the study, hub + GPU), ``leaderboard`` (Open LLM Leaderboard preset, plus MT-Bench),
``mini`` (the default on the embedded model, item counts sized for ~45 s a model on two idle cores), ``mini-gen``
(the heavier generative metrics of the same domains on the embedded model: GSM8K exact match,
executed HumanEval/MBPP), ``mini-gemma`` (the ``mini`` tasks on the second embedded family,
Gemma-3-270m), ``tiny`` (tests). Tasks of role ``validation`` are surrogates for
hyperparameter search and are never selected as benchmark cases.
"""

from __future__ import annotations

from mergebench import hookimpl
from mergebench.specs import DOMAINS, GENERAL, TaskSpec

LMEVAL = "mergebench.evaluation.lmeval:LmEvalTask"
STUDY_LANGUAGES = ("fr", "es", "de", "ru")


def _lm_eval(name: str, domain: str, lm_eval_task: str, metric: str, summary: str, *,
             suites: frozenset = frozenset({"full"}), **options) -> TaskSpec:
    return TaskSpec(
        name=name, impl=LMEVAL, domain=domain, metric=metric, suites=suites, summary=summary,
        options=tuple(sorted({"lm_eval_task": lm_eval_task, "metric": metric, **options}.items())),
    )


def study_tasks() -> list[TaskSpec]:
    """The study's test benchmarks (Table 3) that lm-eval implements."""
    tasks = [
        _lm_eval("ifeval", "instruction", "ifeval", "prompt_level_strict_acc", "IFEval, prompt-level strict accuracy (541)"),
        _lm_eval("gsm8k", "math", "gsm8k_cot", "exact_match", "GSM8K 8-shot chain-of-thought, exact match (1,319)",
                 filter="strict-match", num_fewshot=8),
        _lm_eval("math", "math", "minerva_math", "exact_match", "MATH 0-shot chain-of-thought, exact match (5,000)",
                 num_fewshot=0),
    ]
    for lang in STUDY_LANGUAGES:
        tasks += [
            _lm_eval(f"m_mmlu_{lang}", "multilingual", f"m_mmlu_{lang}", "acc", f"M_MMLU ({lang}), accuracy"),
            _lm_eval(f"m_arc_{lang}", "multilingual", f"arc_{lang}", "acc_norm", f"M_ARC ({lang}), normalized accuracy"),
            _lm_eval(f"m_hellaswag_{lang}", "multilingual", f"hellaswag_{lang}", "acc_norm",
                     f"M_HellaSwag ({lang}), normalized accuracy"),
        ]
    return tasks



MINI = frozenset({"mini", "mini-gemma"})
"""The default suite's tasks, shared by the second embedded family's suite (``mini-gemma``)."""
MINI_GEN = frozenset({"mini-gen"})
T = "mergebench_builtins.tasks"


def _mini(name: str, impl: str, domain: str, metric: str, summary: str, *, stand_in_for: str = "",
          higher_is_better: bool = True, suites: frozenset = MINI, role: str = "test", version: str = "1",
          needs_chat_template: bool = False, **options) -> TaskSpec:
    return TaskSpec(name=name, impl=f"{T}.{impl}", domain=domain, metric=metric, higher_is_better=higher_is_better,
                    suites=suites, role=role, version=version, summary=summary, stand_in_for=stand_in_for,
                    needs_chat_template=needs_chat_template, options=tuple(sorted(options.items())))


def mini_tasks() -> list[TaskSpec]:
    """The embedded suite: every domain of the study plus forgetting, from data that exists offline."""
    bpb = dict(metric="bits_per_byte", higher_is_better=False)
    return [
        # math
        _mini("gsm8k_mini", "gsm8k:GSM8KExactMatch", "math", "exact_match", suites=MINI_GEN,
              summary="GSM8K test subset (32 of 100 reserved items), chain-of-thought, exact match of the final number",
              stand_in_for="GSM8K 8-shot CoT on all 1,319 items"),
        _mini("gsm8k_bpb_mini", "gsm8k:GSM8KGoldBPB", "math", version="2", **bpb,
              summary="GSM8K test subset (first 6 of 100 reserved items), bits per byte of the reference solution (OLMES gold BPB)",
              stand_in_for="GSM8K 8-shot CoT exact match, which a 135M model scores near zero"),
        _mini("math_bpb_mini", "math:MathGoldBPB", "math", **bpb,
              summary="MATH-500 subset (5 of 100 reserved items, solutions <= 800 chars), bits per byte of the reference solution",
              stand_in_for="MATH 0-shot CoT exact match (5,000 items)"),
        # coding
        _mini("humaneval_bpb_mini", "coding:HumanEvalGoldBPB", "coding", **bpb,
              summary="HumanEval (first 5 of 164), bits per byte of the canonical solution",
              stand_in_for="HumanEval+ pass@1"),
        _mini("mbpp_bpb_mini", "coding:MBPPGoldBPB", "coding", **bpb,
              summary="MBPP (8 of 100 reserved items), bits per byte of the reference program",
              stand_in_for="MBPP+ pass@1"),
        _mini("humaneval_mini", "coding:HumanEvalPass", "coding", "pass@1", suites=MINI_GEN,
              summary="HumanEval (first 20 of 164), greedy completion executed against its tests in a sandbox",
              stand_in_for="HumanEval+ pass@1 (164 items, plus-tests)"),
        _mini("mbpp_mini", "coding:MBPPPass", "coding", "pass@1", suites=MINI_GEN,
              summary="MBPP (20 of 100 reserved items), greedy program executed against its asserts in a sandbox",
              stand_in_for="MBPP+ pass@1 (378 items, plus-tests)"),
        # safety
        _mini("harmbench_mini", "safety:HarmBenchRefusal", "safety", "refusal_rate", needs_chat_template=True,
              summary="HarmBench test standard behaviours (first 12 of 147 not reserved for xstest_like_mini), refusal "
                      "rate of 24-token responses, keyword judge",
              stand_in_for="WildGuardTest / HarmBench / DoAnythingNow refuse-to-answer"),
        _mini("xstest_like_mini", "safety:XSTestLike", "safety", "accuracy", needs_chat_template=True, version="2",
              summary="12 unsafe HarmBench behaviours to refuse and 12 safe look-alikes (ours) to answer, alternating; "
                      "accuracy over both, keyword judge",
              stand_in_for="XSTest accuracy (unsafe prompts refused, safe ones answered)"),
        # multilingual
        _mini("multilingual_bpb_mini", "multilingual:MultilingualBPB", "multilingual", **bpb,
              summary="held-out fr/es/de/ru prose (2 paragraphs per language), bits per byte of the raw text",
              stand_in_for="M_MMLU / M_ARC / M_HellaSwag (fr, es, de, ru), which do not exist offline"),
        # instruction following
        _mini("ifeval_mini", "ifeval:IFEvalMini", "instruction", "inst_level_strict_acc", needs_chat_template=True, version="2",
              summary="IFEval (16 of 100 reserved prompts whose length instructions fit 64 tokens), lm-eval's checkers, "
              "instruction-level strict accuracy (prompt-level in the extras)",
              stand_in_for="IFEval prompt-level strict accuracy on all 541 prompts with full-length answers"),
        # forgetting (normalized by the base model)
        _mini("mmlu_mini", "forgetting:MMLU", "general", "acc_norm",
              summary="MMLU test (24 of 200 reserved items, question+choices <= 400 chars), cloze, length-normalized accuracy",
              stand_in_for="MMLU 5-shot accuracy"),
        _mini("hellaswag_mini", "forgetting:HellaSwag", "general", "acc_norm",
              summary="HellaSwag validation (10 of 200 reserved items), length-normalized accuracy"),
        _mini("arc_mini", "forgetting:ARCEasy", "general", "acc_norm",
              summary="ARC-Easy validation (24 of 200 reserved items), cloze, length-normalized accuracy"),
        _mini("triviaqa_bpb_mini", "forgetting:TriviaQA", "general", **bpb,
              summary="TriviaQA validation (32 of 200 reserved questions), bits per byte of the answer",
              stand_in_for="TriviaQA exact match"),
        _mini("coqa_bpb_mini", "forgetting:CoQA", "general", **bpb,
              summary="CoQA validation (2 of 50 reserved stories, first 8 turns), bits per byte of each answer",
              stand_in_for="CoQA F1"),
        _mini("squad_bpb_mini", "forgetting:SQuAD", "general", **bpb,
              summary="SQuAD v1.1 validation (6 of 200 reserved questions), bits per byte of the answer",
              stand_in_for="SQuAD v2 (not offline; v1.1 has no unanswerable questions)"),
    ]


def validation_tasks() -> list[TaskSpec]:
    """The study's validation surrogates (Appendix B.2), on items no test task scores."""
    return [
        _mini("val_ifeval_like_mini", "ifeval:IFEvalLike", "instruction", "prompt_level_strict_acc", role="validation",
              needs_chat_template=True, summary="IFEval prompts outside ifeval_mini's 100 (8), lm-eval's checkers",
              stand_in_for="IFEval-like data"),
        _mini("val_mmlu_stem_mini", "forgetting:MMLUStem", "math", "acc_norm", role="validation",
              summary="MMLU validation split, STEM subjects (32 of 200 reserved), cloze accuracy",
              stand_in_for="MMLU STEM questions"),
        _mini("val_conala_like_mini", "forgetting:BasicSkillsCoding", "coding", "acc", role="validation",
              summary="OLMES basic-skills coding: the one-line body that fits a docstring, 5 choices (32)",
              stand_in_for="CoNaLa (not offline)"),
        _mini("val_lambada_mini", "forgetting:Lambada", "multilingual", "acc", role="validation",
              summary="LAMBADA last-word greedy accuracy (48 of 200 reserved)", stand_in_for="LAMBADA (as in the study)"),
        _mini("val_wildjailbreak_like_mini", "safety:CopyrightRefusal", "safety", "refusal_rate", role="validation",
              needs_chat_template=True, summary="HarmBench copyright behaviours (12 of 100), refusal rate",
              stand_in_for="WildJailbreak (not offline)"),
    ]


def full_validation_tasks() -> list[TaskSpec]:
    """The study's validation surrogates (Appendix B.2) for the full suite, disjoint from its test tasks."""
    full = frozenset({"full"})
    return [
        TaskSpec(name="val_ifeval_like", impl=f"{T}.ifeval:HubIFEvalLike", domain="instruction",
                 metric="prompt_level_strict_acc", suites=full, role="validation", needs_chat_template=True,
                 summary="IFEval-like data (argilla/ifeval-like-data), 200 prompts, lm-eval's checkers",
                 options=(("dataset", "argilla/ifeval-like-data"), ("limit", 200), ("max_new_tokens", 512),
                          ("name", "filtered"), ("split", "train"))),
        _mini("val_mmlu_stem", "forgetting:MMLUStem", "math", "acc_norm", role="validation", suites=full, limit=200,
              summary="MMLU STEM questions from MMLU's validation split (200), cloze accuracy; the test task uses the test split"),
        _mini("val_conala_like", "forgetting:BasicSkillsCoding", "coding", "acc", role="validation", suites=full, limit=200,
              summary="OLMES basic-skills coding (200), a CoNaLa stand-in", stand_in_for="CoNaLa"),
        _mini("val_lambada", "forgetting:Lambada", "multilingual", "acc", role="validation", suites=full, limit=200,
              summary="LAMBADA last-word accuracy (200 reserved items), as in the study"),
        TaskSpec(name="val_wildjailbreak", impl="mergebench_builtins.tasks.safety_full:HubRefusal", domain="safety",
                 metric="accuracy", suites=full, role="validation", needs_chat_template=True,
                 summary="WildJailbreak eval set (200): refuse adversarial harmful prompts, answer adversarial benign ones",
                 options=(("dataset", "allenai/wildjailbreak"), ("label_field", "data_type"), ("limit", 200),
                          ("load_kwargs", (("delimiter", "\t"), ("keep_default_na", False))), ("name", "eval"),
                          ("prompt_field", "adversarial"), ("refuse_labels", ("adversarial_harmful",)),
                          ("split", "train"))),
    ]


def forgetting_tasks() -> list[TaskSpec]:
    """The study's forgetting suite (Section 4.2), normalized by the base model."""
    return [
        _lm_eval("mmlu", GENERAL, "mmlu", "acc", "MMLU 5-shot accuracy (57 subjects, 14,042)", num_fewshot=5),
        _lm_eval("triviaqa", GENERAL, "triviaqa", "exact_match", "TriviaQA (rc.nocontext) exact match",
                 filter="remove_whitespace"),
        _lm_eval("squadv2", GENERAL, "squadv2", "f1", "SQuAD v2 F1 (needs the `evaluate` squad_v2 metric from the hub)"),
        _lm_eval("coqa", GENERAL, "coqa", "f1", "CoQA F1"),
        _lm_eval("pubmedqa", GENERAL, "pubmedqa", "acc", "PubMedQA accuracy"),
        _lm_eval("wmt14_fr_en", GENERAL, "wmt14-fr-en", "bleu", "WMT14 French to English, BLEU"),
    ]


LEADERBOARD = frozenset({"leaderboard"})


def leaderboard_tasks() -> list[TaskSpec]:
    """The Open LLM Leaderboard (v1) preset: six tasks with its shot counts, no chat template (with
    :func:`judged_tasks`' ``mt_bench``, the chat benchmark the merging playbook lists beside them)."""
    return [
        _lm_eval("lb_arc_challenge", GENERAL, "arc_challenge", "acc_norm", "ARC-Challenge 25-shot, normalized accuracy",
                 suites=LEADERBOARD, num_fewshot=25, chat=False),
        _lm_eval("lb_hellaswag", GENERAL, "hellaswag", "acc_norm", "HellaSwag 10-shot, normalized accuracy",
                 suites=LEADERBOARD, num_fewshot=10, chat=False),
        _lm_eval("lb_mmlu", GENERAL, "mmlu", "acc", "MMLU 5-shot accuracy", suites=LEADERBOARD, num_fewshot=5, chat=False),
        _lm_eval("lb_truthfulqa", GENERAL, "truthfulqa_mc2", "acc", "TruthfulQA MC2 0-shot", suites=LEADERBOARD,
                 num_fewshot=0, chat=False),
        _lm_eval("lb_winogrande", GENERAL, "winogrande", "acc", "Winogrande 5-shot accuracy", suites=LEADERBOARD,
                 num_fewshot=5, chat=False),
        _lm_eval("lb_gsm8k", GENERAL, "gsm8k", "exact_match", "GSM8K 5-shot exact match (strict)", suites=LEADERBOARD,
                 num_fewshot=5, filter="strict-match", chat=False),
    ]


def judged_tasks() -> list[TaskSpec]:
    """MT-Bench-style judged chat (full suite and leaderboard preset): needs a judge model (``--mb-judge-url``)."""
    return [
        TaskSpec(name="mt_bench", impl=f"{T}.mt_bench:MTBench", domain=GENERAL, metric="judge_score",
                 suites=frozenset({"full", "leaderboard"}), needs_chat_template=True,
                 summary="MT-Bench (80 two-turn questions, 8 categories), each turn rated 1-10 by a judge model "
                 "with FastChat's single-answer prompts, mean rating",
                 options=(("dataset", "lighteval/mt-bench"), ("max_new_tokens", 1024), ("split", "train"))),
    ]


def safety_tasks() -> list[TaskSpec]:
    """The study's safety benchmarks: refuse-to-answer on harmful prompts, XSTest accuracy (judge: WildGuard)."""
    impl = "mergebench_builtins.tasks.safety_full:HubRefusal"

    def spec(task: str, metric: str, summary: str, **options) -> TaskSpec:
        return TaskSpec(name=task, impl=impl, domain="safety", metric=metric, suites=frozenset({"full"}),
                        summary=summary, needs_chat_template=True, options=tuple(sorted(options.items())))

    return [
        spec("wildguardtest", "refusal_rate", "WildGuardTest harmful prompts, refuse-to-answer (WildGuard judge)",
             dataset="allenai/wildguardmix", name="wildguardtest", split="test", prompt_field="prompt",
             label_field="prompt_harm_label", keep_labels=("harmful",), refuse_labels=("harmful",)),
        spec("harmbench", "refusal_rate", "HarmBench standard behaviours, refuse-to-answer (WildGuard judge)",
             dataset="walledai/HarmBench", name="standard", split="train", prompt_field="prompt"),
        spec("do_anything_now", "refusal_rate", "in-the-wild jailbreak (DAN) prompts, refuse-to-answer (WildGuard judge)",
             dataset="TrustAIRLab/in-the-wild-jailbreak-prompts", name="jailbreak_2023_12_25", split="train",
             prompt_field="prompt"),
        spec("xstest", "accuracy", "XSTest: refuse the 200 unsafe prompts, answer the 250 safe ones (WildGuard judge)",
             dataset="Paul/XSTest", split="train", prompt_field="prompt", label_field="label",
             refuse_labels=("unsafe",)),
    ]


def evalplus_tasks() -> list[TaskSpec]:
    """HumanEval+ and MBPP+ pass@1 through evalplus (base and plus tests)."""
    impl = "mergebench_builtins.tasks.evalplus:EvalPlus"
    return [
        TaskSpec(name="humaneval_plus", impl=impl, domain="coding", metric="pass@1", suites=frozenset({"full"}),
                 summary="HumanEval+ pass@1 (164), greedy, evalplus base + plus tests", options=(("dataset", "humaneval"),)),
        TaskSpec(name="mbpp_plus", impl=impl, domain="coding", metric="pass@1", suites=frozenset({"full"}),
                 summary="MBPP+ pass@1 (378), greedy, evalplus base + plus tests", options=(("dataset", "mbpp"),)),
    ]


@hookimpl
def mergebench_register_tasks(register):
    for spec in [*study_tasks(), *evalplus_tasks(), *safety_tasks(), *forgetting_tasks(), *leaderboard_tasks(),
                 *judged_tasks()]:
        register(spec)
    for spec in [*mini_tasks(), *validation_tasks(), *full_validation_tasks()]:
        register(spec)
    for domain in DOMAINS:
        register(
            TaskSpec(
                name=f"toy_{domain}",
                impl="mergebench_builtins.tasks.toy:ToyBPB",
                domain=domain,
                metric="bits_per_byte",
                higher_is_better=False,
                suites=frozenset({"tiny"}),
                summary=f"toy {domain} strings scored by bits per byte (tests only)",
            )
        )
        register(
            TaskSpec(
                name=f"toy_val_{domain}",
                impl="mergebench_builtins.tasks.toy:ToyBPB",
                domain=domain,
                metric="bits_per_byte",
                higher_is_better=False,
                role="validation",
                suites=frozenset({"tiny"}),
                summary=f"toy {domain} validation strings (tests of the hyperparameter search only)",
                options=(("validation", True),),
            )
        )
    register(
        TaskSpec(
            name="toy_generate",
            impl="mergebench_builtins.tasks.toy:ToyGeneration",
            domain="instruction",
            metric="nonempty",
            suites=frozenset({"tiny"}),
            needs_chat_template=True,
            summary="toy greedy generation (tests only)",
        )
    )
