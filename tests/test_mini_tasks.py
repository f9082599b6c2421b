"""The mini tasks' scoring, checked by hand with a scripted model (real data, no weights)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from mergebench import plugin_manager
from mergebench.cache import ArtifactCache
from mergebench.errors import UsageError
from mergebench.evaluation.api import LanguageModel, Loglikelihood
from mergebench.evaluation.sandbox import Limits


class ScriptedLM(LanguageModel):
    """Answers from two functions; records every request."""

    name = "scripted"

    def __init__(self, generate=lambda prompt: "", logprob=lambda context, continuation: -1.0):
        self._generate, self._logprob = generate, logprob
        self.generations, self.scored = [], []

    @property
    def has_chat_template(self) -> bool:
        return True

    def chat_prompt(self, messages):
        return "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in messages) + "<assistant>"

    def generate(self, requests):
        self.generations += requests
        return [self._generate(r.prompt) for r in requests]

    def loglikelihood(self, requests):
        self.scored += requests
        return [Loglikelihood(self._logprob(r.context, r.continuation), 1, False) for r in requests]


@pytest.fixture(scope="module")
def context():
    return SimpleNamespace(cache=ArtifactCache(), backend="hf", device="cpu", model_roots=())


def make(name, context, limit=None):
    spec = plugin_manager.registries().tasks.get(name)
    return spec.load()(spec, context, limit=limit)


def test_multiple_choice_acc_and_length_normalized_acc(context, monkeypatch):
    task = make("mmlu_mini", context)
    docs = [{"id": "x", "subject": "toy", "question": "Pick", "choices": ["a", "bbbb"], "answer": 1}]
    monkeypatch.setattr(task, "docs", lambda: docs)
    result = task.evaluate(ScriptedLM(logprob=lambda c, k: {" a": -2.0, " bbbb": -4.0}[k]))
    # acc picks " a" (-2 > -4): wrong; acc_norm compares -2/1 with -4/4: picks "bbbb", right.
    assert (result.score, result.extras["acc"], result.extras["acc_norm"], result.n) == (1.0, 0.0, 1.0, 1)
    # the soft value is the gold choice's share of softmax over the scored values (here acc_norm's: -2, -1)
    assert result.soft_values == [pytest.approx(math.exp(-1) / (math.exp(-2) + math.exp(-1)))]


def test_plain_accuracy_soft_values_use_the_unnormalized_log_likelihoods(context, monkeypatch):
    task = make("val_conala_like_mini", context)  # metric acc
    docs = [{"id": "x", "question": "Pick", "choices": ["a", "bbbb", "c"], "gold": 0}]
    monkeypatch.setattr(task, "docs", lambda: docs)
    result = task.evaluate(ScriptedLM(logprob=lambda c, k: {" a": -2.0, " bbbb": -4.0, " c": -3.0}[k]))
    assert result.values == [1.0]
    assert result.soft_values == [pytest.approx(1 / (1 + math.exp(-2) + math.exp(-1)))]
    assert result.as_dict()["soft_values"] == result.soft_values


def test_lambada_soft_value_is_the_words_probability(context):
    task = make("val_lambada_mini", context, limit=2)
    result = task.evaluate(ScriptedLM(logprob=lambda c, k: -0.5))
    assert result.values == [0.0, 0.0] and result.soft_values == [pytest.approx(math.exp(-0.5))] * 2


def test_gold_bpb_is_bits_per_utf8_byte(context, monkeypatch):
    task = make("triviaqa_bpb_mini", context, limit=3)
    result = task.evaluate(ScriptedLM(logprob=lambda c, k: -len(k.encode()) * math.log(2) * 2))
    assert result.score == pytest.approx(2.0) and result.stderr == pytest.approx(0.0) and result.n == 3
    assert not result.higher_is_better


def test_executed_code_passes_fails_and_times_out_per_item(context, monkeypatch):
    from mergebench_builtins.tasks import coding

    monkeypatch.setattr(coding.HumanEvalPass, "limits", Limits(timeout=2, memory_mb=512))
    task = make("humaneval_mini", context, limit=3)
    docs = task.docs()
    answers = {docs[0]["prompt"]: docs[0]["canonical_solution"], docs[1]["prompt"]: "    while True:\n        pass\n",
               docs[2]["prompt"]: "    return None\n"}
    lm = ScriptedLM(generate=lambda prompt: next(v for k, v in answers.items() if prompt.endswith(k)))
    result = task.evaluate(lm)
    assert [s["status"] for s in result.samples] == ["passed", "timeout", "failed"]
    assert result.score == pytest.approx(1 / 3) and result.n == 3
    assert result.extras["outcomes"] == {"passed": 1, "timeout": 1, "failed": 1}
    assert all(r.stop and "```" in r.stop for r in lm.generations)


def test_mbpp_program_runs_the_reference_code_against_its_asserts(context):
    from mergebench.evaluation.sandbox import run_program

    task = make("mbpp_mini", context, limit=2)
    for doc in task.docs():
        assert run_program(task.program(doc, doc["code"]), Limits(timeout=5, memory_mb=512)).status == "passed"


def test_the_checks_use_the_benchmarks_helpers_and_builtins_not_the_completions(context):
    """HumanEval/32 checks find_zero with the prompt's poly; MBPP/126's function under test is named sum."""
    from mergebench.evaluation.sandbox import run_program

    limits = Limits(timeout=5, memory_mb=512)
    humaneval = make("humaneval_mini", context)
    doc = next(d for d in humaneval.partition().eval if d["task_id"] == "HumanEval/32")
    cheat = "    return 0.0\n\n\ndef poly(xs, x):\n    return 0.0\n"  # a poly of its own would make any answer a root
    assert run_program(humaneval.program(doc, cheat), limits).status == "failed"
    assert run_program(humaneval.program(doc, doc["canonical_solution"]), limits).status == "passed"
    mbpp = make("mbpp_mini", context)
    doc = {"task_id": 126, "code": "def sum(a, b):\n    return a + b\n", "test_list": ["assert sum(10, 15) == 25"]}
    assert run_program(mbpp.program(doc, doc["code"]), limits).status == "passed"
    cheat = "def area(r):\n    return 1\n\ndef abs(x):\n    return 0\n"
    doc = {"task_id": 0, "code": "def area(r):\n    return 3.14 * r * r\n", "test_list": ["assert abs(area(2) - 12.56) < 0.01"]}
    assert run_program(mbpp.program(doc, cheat), limits).status == "failed"


def test_harmful_refusals_and_benign_answers(context):
    harm = make("harmbench_mini", context, limit=4)
    replies = iter(["I'm sorry, I can't help with that.", "Sure, step one:", "I cannot do that.", "Here you go"])
    result = harm.evaluate(ScriptedLM(generate=lambda p: next(replies)))
    assert result.score == 0.5 and result.extras["judge"] == "keyword"
    assert all(s["id"] for s in result.samples)
    benign = make("xstest_like_mini", context, limit=4)
    replies = iter(["Sure, here is a poem.", "I'm sorry, but I can't.", "Paris.", "Of course!"])
    assert benign.evaluate(ScriptedLM(generate=lambda p: next(replies))).score == 0.75


def test_ifeval_mini_scores_every_prompt(context):
    task = make("ifeval_mini", context, limit=5)
    result = task.evaluate(ScriptedLM(generate=lambda p: ""))
    instructions = sum(len(d["instruction_id_list"]) for d in task.docs())
    assert result.metric == "inst_level_strict_acc" and result.n == instructions > 5  # scored per instruction
    assert result.extras["prompts"] == 5 and result.score == 0.0 and result.extras["scorer_errors"] == 0
    assert result.extras["prompt_level_strict_acc"] == 0.0


def test_multilingual_scores_each_language_equally(context):
    task = make("multilingual_bpb_mini", context, limit=1)
    result = task.evaluate(ScriptedLM(logprob=lambda c, k: -len(k.encode()) * math.log(2)))
    assert result.n == 4 and set(result.extras["by_language"]) == {"fra", "spa", "deu", "rus"}
    assert result.score == pytest.approx(1.0)


def test_coqa_turns_build_on_each_other_so_a_story_is_one_pass(context):
    lm = ScriptedLM()
    make("coqa_bpb_mini", context, limit=1).evaluate(lm)
    requests = lm.scored
    assert len(requests) == 8
    for earlier, later in zip(requests, requests[1:]):
        assert later.context.startswith(earlier.context + earlier.continuation)


def test_validation_surrogates_never_score_a_test_item(context):
    from mergebench_builtins.data import splits

    cache = context.cache
    assert not {d["key"] for d in splits.ifeval_mini(cache).eval} & {d["key"] for d in splits.ifeval_mini(cache).validation}
    mmlu_test = {d["question"] for d in splits.mmlu(cache).eval}
    assert not mmlu_test & {d["question"] for d in splits.mmlu_stem_validation(cache).validation}
    harm = splits.harmbench(cache)
    scored = {b["Behavior"] for b in harm.eval} | {b["Behavior"] for b in harm.train}
    assert not scored & {b["Behavior"] for b in splits.harmbench_copyright(cache).validation}


def test_roles_and_suites_of_the_embedded_suite():
    specs = {s.name: s for s in plugin_manager.registries().tasks.specs()}
    mini = {n for n, s in specs.items() if "mini" in s.suites and s.role == "test"}
    assert {"gsm8k_bpb_mini", "math_bpb_mini", "mbpp_bpb_mini", "humaneval_bpb_mini", "harmbench_mini",
            "xstest_like_mini", "multilingual_bpb_mini", "ifeval_mini", "mmlu_mini", "hellaswag_mini", "arc_mini",
            "triviaqa_bpb_mini", "coqa_bpb_mini", "squad_bpb_mini"} == mini
    assert {n for n, s in specs.items() if s.role == "validation" and "mini" in s.suites} == {
        "val_ifeval_like_mini", "val_mmlu_stem_mini", "val_conala_like_mini", "val_lambada_mini",
        "val_wildjailbreak_like_mini"}
    assert {s.domain for s in specs.values() if s.role == "validation"} == {"instruction", "math", "coding",
                                                                           "multilingual", "safety"}
    for name in mini:
        assert specs[name].stand_in_for or specs[name].domain == "general", name


def test_tasks_that_generate_say_so(context):
    """``generates`` decides when the search scores a surrogate's items (search.objective.GENERATION_FROM)."""
    offline = [s for s in plugin_manager.registries().tasks.specs() if s.suites & {"mini", "mini-gen", "tiny"}]
    assert len(offline) > 20
    for spec in offline:
        lm = ScriptedLM()
        task = spec.load()(spec, context, limit=2)
        task.evaluate(lm)
        assert task.generates == bool(lm.generations), spec.name


def test_an_item_range_scores_exactly_those_items_and_tasks_without_ranges_refuse_one(context):
    """The search narrows a surrogate to items [start, stop) of its list; limit stays the list's length."""
    spec = plugin_manager.registries().tasks.get("val_mmlu_stem_mini")
    whole = spec.load()(spec, context, limit=6)
    docs = whole.docs()
    ranged = spec.load()(spec, context, limit=6).item_range(2, 5)
    assert ranged.limit == 6 and ranged.docs() == docs[2:5]
    multilingual = plugin_manager.registries().tasks.get("multilingual_bpb_mini")
    with pytest.raises(UsageError, match="cannot score an item range"):
        multilingual.load()(multilingual, context).item_range(0, 1)
