"""mt_bench against a fake judge on loopback: two conditioned turns, FastChat's prompts, scores by hand, failures, the key.

The fixture questions (tests/data/mt_bench, FastChat's layout) are five questions in three categories;
question 3 has a reference answer in reference_answer/gpt-4.jsonl, question 4 only its own short
``reference`` field. The fake judge rates each (question, turn) from a script.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
from pathlib import Path

import pytest

from mergebench import plugin_manager, progress
from mergebench.cache import ArtifactCache, ArtifactKey
from mergebench.errors import JudgeError, UsageError
from mergebench.evaluation.judge import JudgeSettings
from mergebench.pipeline import ModelRef, Pipeline, RunContext
from mergebench_builtins.tasks import mt_bench_prompts as prompts
from tests.fake_judge import FakeJudge, closed_port_url
from tests.test_mini_tasks import ScriptedLM

QUESTIONS = Path(__file__).parent / "data" / "mt_bench" / "question.jsonl"
KEY = "sk-mtbench-secret-0123456789"
KEY_ENV = "MB_TEST_JUDGE_KEY"

# (keyword of the question, turn) -> what the judge says; lists are successive answers to the same judgment
SCRIPT = {
    ("haiku", 1): "Vivid imagery. Rating: [[8]]",
    ("haiku", 2): "Follows the constraint mostly. Rating: [[6]]",
    ("sleeping cat", 1): "Fine sentence. Rating: [7]",  # FastChat's backup pattern
    ("sleeping cat", 2): ["I cannot decide.", "Still undecided."],  # unparseable twice: excluded, counted
    ("12 * 7", 1): "Correct. Rating: [[10]]",
    ("12 * 7", 2): ["Correct, well done.", "Rating: [[9]]"],  # unparseable once: the second ask counts
    ("odd numbers", 1): "Wrong sum. Rating: [[4]]",
    ("odd numbers", 2): "Wrong again. Rating: [[2]]",
    ("sky", 1): "Shallow. Rating: [[5]]",
    ("sky", 2): "Too technical. Rating: [[3]]",
}
# The ratings that count, by hand: 8 6 7 | 10 9 4 2 | 5 3 (question 2's turn 2 is excluded)
RATED = [8, 6, 7, 10, 9, 4, 2, 5, 3]


def scripted_judge(script=SCRIPT):
    asked: dict[tuple[str, str, int], int] = {}  # per judge model, keyword and turn

    def reply(body: dict) -> str:
        user = body["messages"][-1]["content"]
        if body["max_tokens"] == 1:
            return "OK"
        turn = 2 if "### User:" in user else 1
        keyword = next(k for k, t in script if t == turn and k in user)
        said = script[keyword, turn]
        count = asked[body["model"], keyword, turn] = asked.get((body["model"], keyword, turn), 0) + 1
        return said[count - 1] if isinstance(said, list) else said

    return reply


def answers(prompt: str) -> str:
    """The scripted model's answers: they name the question they answer and the turn, padded with spaces."""
    turn = prompt.count("<user>")
    last_user = prompt.rsplit("<user>", 1)[1].split("</user>", 1)[0]
    return f"  answer {turn} to: {last_user}\n"


def make_task(context, limit=None, **options):
    spec = plugin_manager.registries().tasks.get("mt_bench")
    spec = dataclasses.replace(spec, options=tuple(sorted({**dict(spec.options), "questions": str(QUESTIONS),
                                                             **options}.items())))
    return spec.load()(spec, context, limit=limit)


def context_for(url: str, model: str = "judge", cache: ArtifactCache | None = None):
    return RunContext(cache=cache or ArtifactCache(), judge=JudgeSettings(url=url, model=model, key_env=KEY_ENV))


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    return KEY


@pytest.fixture
def judge(key):
    with FakeJudge(scripted_judge(), key=key, models=("judge", "other-judge"),
                   errors=[(429, {"Retry-After": "0"}, {"error": {"message": "rate limited"}})]) as server:
        yield server


def test_scores_by_hand_from_the_scripted_ratings(judge):
    lm = ScriptedLM(generate=answers)
    result = make_task(context_for(judge.url)).evaluate(lm)
    mean = sum(RATED) / len(RATED)  # 54 / 9 = 6.0
    stderr = math.sqrt(sum((r - mean) ** 2 for r in RATED) / (len(RATED) - 1) / len(RATED))
    assert (result.score, result.n, result.values) == (6.0, 9, [float(r) for r in RATED])
    assert result.stderr == pytest.approx(stderr) and result.stderr == pytest.approx(math.sqrt(7.5 / 9))
    extras = result.extras
    assert extras["turn_1"] == pytest.approx((8 + 7 + 10 + 4 + 5) / 5) and extras["turn_2"] == pytest.approx((6 + 9 + 2 + 3) / 4)
    assert extras["categories"] == {
        "writing": {"mean": 7.0, "stderr": pytest.approx(math.sqrt(1 / 3)), "n": 3},
        "math": {"mean": 6.25, "stderr": pytest.approx(math.sqrt(((3.75 ** 2 + 2.75 ** 2 + 2.25 ** 2 + 4.25 ** 2) / 3) / 4)), "n": 4},
        "stem": {"mean": 4.0, "stderr": pytest.approx(1.0), "n": 2},
    }
    assert (extras["judgments"], extras["unparsed"], extras["retried"]) == (10, 1, 2)
    assert extras["unparsed_items"] == [{"question_id": 2, "turn": 2}]
    assert extras["judge_model"] == "judge" and extras["judge_prompts"] == prompts.PROMPT_VERSION
    assert extras["references"] == {"reference_answers": 1, "question": 1}
    unparsed = next(s for s in result.samples if (s["question_id"], s["turn"]) == (2, 2))
    assert (unparsed["rating"], unparsed["judgment"], unparsed["attempts"]) == (None, "Still undecided.", 2)
    # every request carried the key; the 429 was retried; 10 judgments + 2 second asks reached the judge
    assert all(r["headers"]["Authorization"] == f"Bearer {KEY}" for r in judge.requests)
    assert [r["status"] for r in judge.requests if r["path"] == "/v1/chat/completions"].count(429) == 1
    assert len(judge.completions()) == 12
    assert all(b["temperature"] == 0 and b["max_tokens"] == 2048 and b["model"] == "judge" for b in judge.completions())


def test_turn_two_is_conditioned_on_the_models_own_first_answer(judge):
    lm = ScriptedLM(generate=answers)
    make_task(context_for(judge.url), limit=2).evaluate(lm)
    first, second = lm.generations[:2], lm.generations[2:]
    assert [r.prompt for r in first] == ["<user>Write a haiku about autumn leaves.</user><assistant>",
                                         "<user>Describe a sleeping cat in one sentence.</user><assistant>"]
    # the answer as the model gave it, stripped (as FastChat keeps it), is the assistant turn of the conversation
    assert second[0].prompt == ("<user>Write a haiku about autumn leaves.</user>"
                                "<assistant>answer 1 to: Write a haiku about autumn leaves.</assistant>"
                                "<user>Rewrite it so that every line starts with the letter A.</user><assistant>")
    assert all(r.max_new_tokens == 1024 and r.stop == () for r in lm.generations)
    # and the judge of turn 2 sees the whole conversation, in FastChat's multi-turn template
    turn2 = next(b for b in judge.completions() if "### User:" in b["messages"][1]["content"] and "haiku" in
                 b["messages"][1]["content"])
    assert turn2["messages"] == [
        {"role": "system", "content": prompts.SINGLE_V1_MULTI_TURN.system},
        {"role": "user", "content": (
            "<|The Start of Assistant A's Conversation with User|>\n\n"
            "### User:\nWrite a haiku about autumn leaves.\n\n"
            "### Assistant A:\nanswer 1 to: Write a haiku about autumn leaves.\n\n"
            "### User:\nRewrite it so that every line starts with the letter A.\n\n"
            "### Assistant A:\nanswer 2 to: Rewrite it so that every line starts with the letter A.\n\n"
            "<|The End of Assistant A's Conversation with User|>")},
    ]


def test_reference_categories_are_graded_against_the_reference_answers(judge):
    lm = ScriptedLM(generate=answers)
    result = make_task(context_for(judge.url)).evaluate(lm)
    by_question = {(s["question_id"], s["turn"]): s for s in result.samples}
    assert [by_question[3, t]["judge_prompt"] for t in (1, 2)] == ["single-math-v1", "single-math-v1-multi-turn"]
    assert [by_question[1, t]["judge_prompt"] for t in (1, 2)] == ["single-v1", "single-v1-multi-turn"]
    assert (by_question[3, 1]["reference"], by_question[4, 1]["reference"], by_question[5, 1]["reference"]) == \
           ("reference_answers", "question", "")
    math_turn1 = next(b for b in judge.completions() if "What is 12 * 7?" in b["messages"][1]["content"]
                      and "### User:" not in b["messages"][1]["content"])
    assert math_turn1["messages"][0] == {"role": "system", "content": "You are a helpful assistant."}
    assert math_turn1["messages"][1]["content"].endswith(
        "[Question]\nWhat is 12 * 7?\n\n[The Start of Reference Answer]\n12 * 7 = 84.\n[The End of Reference Answer]\n\n"
        "[The Start of Assistant's Answer]\nanswer 1 to: What is 12 * 7?\n[The End of Assistant's Answer]")
    odd_turn2 = next(b for b in judge.completions() if "odd numbers" in b["messages"][1]["content"]
                     and "### Reference answer:" in b["messages"][1]["content"])
    assert "### Reference answer:\n25\n\n### User:\nAnd the sum of the first ten odd numbers?\n\n### Reference answer:\n100" \
        in odd_turn2["messages"][1]["content"]


def test_a_reference_category_without_any_reference_uses_the_general_prompt_and_says_so(tmp_path, key):
    questions = tmp_path / "question.jsonl"
    questions.write_text(json.dumps({"question_id": 9, "category": "reasoning", "turns": ["Is 7 prime?", "And 9?"]}) + "\n")
    lines = io.StringIO()
    with FakeJudge(lambda body: "[[6]]", key=key) as server, progress.use_sink(progress.LineSink(stream=lines)):
        result = make_task(context_for(server.url), questions=str(questions)).evaluate(ScriptedLM(generate=answers))
    assert [s["judge_prompt"] for s in result.samples] == ["single-v1", "single-v1-multi-turn"]
    assert result.extras["references"] == {"none": 1} and result.score == 6.0
    assert ("  mt_bench: 0 reference-category question(s) graded against the question file's short references and 1 "
            "without a reference (FastChat uses reference_answer/gpt-4.jsonl: set MERGEBENCH_MT_BENCH_REFERENCES)\n"
            "  judge (judge): started (2 judgments)\n") in lines.getvalue()


def test_an_unreachable_judge_stops_the_task_before_any_generation(key):
    lm = ScriptedLM(generate=answers)
    url = closed_port_url()
    with pytest.raises(JudgeError, match=r"^cannot reach the judge at http://127\.0\.0\.1:\d+/v1 \(") as raised:
        make_task(context_for(url)).evaluate(lm)
    assert lm.generations == [] and KEY not in str(raised.value)


def test_no_judge_configured_is_a_usage_error_before_any_generation(monkeypatch):
    for name in ("MERGEBENCH_JUDGE_URL", "MERGEBENCH_JUDGE_MODEL"):
        monkeypatch.delenv(name, raising=False)
    lm = ScriptedLM(generate=answers)
    with pytest.raises(UsageError, match="task 'mt_bench' grades answers with a judge model and needs its URL and model name"):
        make_task(RunContext(cache=ArtifactCache())).evaluate(lm)
    assert lm.generations == []


def test_a_judge_that_never_rates_is_an_error_that_shows_what_it_said(key):
    with FakeJudge(lambda body: "This answer is good.", key=key) as server:
        with pytest.raises(JudgeError) as raised:
            make_task(context_for(server.url), limit=1).evaluate(ScriptedLM(generate=answers))
    assert str(raised.value) == ("the judge 'judge' gave no parseable rating ([[x]] or [x]) in 2 judgment(s), each asked "
                                 "twice; the first said: 'This answer is good.'")


def test_the_judge_model_and_prompts_are_in_the_cache_key_but_not_its_url(judge):
    base = make_task(context_for(judge.url)).fingerprint()
    assert base["judge"] == {"model": "judge", "prompts": prompts.PROMPT_VERSION, "temperature": 0, "max_tokens": 2048,
                             "unparsed": base["judge"]["unparsed"]}
    assert make_task(context_for("http://elsewhere:8000/v1")).fingerprint() == base
    assert make_task(context_for(judge.url, model="other-judge")).fingerprint() != base
    assert base["questions"]["file"] == "question.jsonl" and base["reference_answers"]["file"] == "gpt-4.jsonl"


def test_the_prompts_are_fastchats_word_for_word():
    assert prompts.prompts_digest() == prompts.FASTCHAT_DIGEST
    assert prompts.PROMPT_VERSION.endswith(prompts.FASTCHAT_DIGEST[:12])


def test_the_pytest_options_reach_the_run_context(pytester, monkeypatch, tmp_path):
    monkeypatch.setenv("MERGEBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MERGEBENCH_JUDGE_MODEL", "from-the-environment")
    pytester.makepyfile(test_judge_options="""
        def test_judge(mergebench_pipeline):
            judge = mergebench_pipeline.context.judge
            assert (judge.url, judge.model, judge.key_env) == ("http://judge:8000/v1", "from-the-environment", "MY_KEY")
    """)
    result = pytester.runpytest_subprocess("--mb-judge-url", "http://judge:8000/v1", "--mb-judge-key-env", "MY_KEY",
                                           "--mb-device", "cpu")  # a subprocess: the device check imports torch
    result.assert_outcomes(passed=1)


# -- real models ------------------------------------------------------------------------------
class Recording:
    """Wraps a language model and keeps the prompts it was asked to continue."""

    def __init__(self, lm) -> None:
        self.lm, self.prompts = lm, []

    def __getattr__(self, name):
        return getattr(self.lm, name)

    def generate(self, requests):
        self.prompts += [r.prompt for r in requests]
        return self.lm.generate(requests)


def run_on(lm, url: str, **options):
    recording = Recording(lm)
    result = make_task(context_for(url), **options).evaluate(recording)
    first, second = recording.prompts[:5], recording.prompts[5:]
    by_question = {(s["question_id"], s["turn"]): s for s in result.samples}
    for n, (prompt, question) in enumerate(zip(second, json_lines(QUESTIONS)), start=1):
        assert prompt == lm.chat_prompt([{"role": "user", "content": question["turns"][0]},
                                         {"role": "assistant", "content": by_question[n, 1]["answer"]},
                                         {"role": "user", "content": question["turns"][1]}])
    assert first == [lm.chat_prompt([{"role": "user", "content": q["turns"][0]}]) for q in json_lines(QUESTIONS)]
    return result


def json_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_on_a_tiny_llama(tiny_llama, judge):
    from mergebench.evaluation.hf import HFLanguageModel

    lm = HFLanguageModel.from_pretrained(tiny_llama, batch_size=4, device="cpu")
    result = run_on(lm, judge.url, max_new_tokens=8)
    assert result.score == 6.0 and result.n == 9  # the judge's script does not depend on the answers


@pytest.mark.slow
def test_on_the_embedded_smollm2(judge):
    """The embedded model from the standard cache ($MERGEBENCH_CACHE; built from its wheel the first time, ~1 min)."""
    from mergebench.evaluation.hf import HFLanguageModel

    registries = plugin_manager.registries()
    base = Pipeline(RunContext(cache=ArtifactCache(), device="cpu"), registries).base(registries.models.get("smollm2-135m-instruct"))
    lm = HFLanguageModel.from_pretrained(base.path, batch_size=5, device="cpu")
    result = run_on(lm, judge.url, max_new_tokens=24)
    assert result.score == 6.0
    assert all(s["answer"] for s in result.samples)  # a real instruct model answers both turns
    assert "<|im_start|>assistant\n" in lm.chat_prompt([{"role": "user", "content": "x"}])


# -- the API key never leaves the environment ----------------------------------------------------
def test_the_key_is_never_in_results_samples_cache_key_or_errors(tiny_llama, judge, tmp_path, capfd):
    registries = plugin_manager.registries()
    spec = registries.tasks.get("mt_bench")
    spec = dataclasses.replace(spec, options=tuple(sorted({**dict(spec.options), "questions": str(QUESTIONS),
                                                            "max_new_tokens": 4}.items())))
    cache = ArtifactCache(tmp_path / "cache")
    pipeline = Pipeline(context_for(judge.url, cache=cache), registries)
    ref = ModelRef(ArtifactKey.of("base", {"path": str(tiny_llama)}), tiny_llama, "base tiny", "tiny")
    result = pipeline.evaluate(ref, spec)
    assert result.score == 6.0
    written = "\n".join(p.read_text() for p in (tmp_path / "cache").rglob("*") if p.is_file() and p.suffix in (".json", ".jsonl"))
    assert '"judge_model": "judge"' in written and '"fingerprint"' in written  # the result and its cache key were read
    assert KEY not in written and KEY not in repr(pipeline.context)
    # a second run finds the cached evaluation: the judge is not asked again; another judge model re-scores
    asked = len(judge.completions())
    pipeline.evaluate(ref, spec)
    assert len(judge.completions()) == asked
    Pipeline(context_for(judge.url, model="other-judge", cache=cache), registries).evaluate(ref, spec)
    assert len(judge.completions()) == asked + 12
    # an error built from a server's reply that echoes the key
    with FakeJudge(models=None, errors=[(400, {}, {"error": {"message": f"bad header Bearer {KEY}"}})]) as echo:
        with pytest.raises(JudgeError) as raised:
            make_task(context_for(echo.url), limit=1).evaluate(ScriptedLM(generate=answers))
    assert "Bearer ***" in str(raised.value) and KEY not in str(raised.value)
    out, err = capfd.readouterr()
    assert KEY not in out and KEY not in err
