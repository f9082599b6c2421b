"""lm-eval's IFEval checkers give the official verdicts on hand-made responses, offline.

Sentence counts use NLTK's Punkt with the official English parameters (installed from a wheel,
no download): "Dr. Smith" and "U.S." do not end sentences, as in the official scorer.
"""

from __future__ import annotations

import pytest

from mergebench.cache import ArtifactCache
from mergebench_builtins.tasks.ifeval import fits_budget, score_response


@pytest.fixture(scope="module")
def cache() -> ArtifactCache:
    return ArtifactCache()


def doc(instructions: list[tuple[str, dict]], prompt: str = "Answer the question.") -> dict:
    return {"key": 1, "prompt": prompt, "instruction_id_list": [i for i, _ in instructions],
            "kwargs": [k for _, k in instructions]}


@pytest.mark.parametrize("instruction, kwargs, response, strict", [
    ("change_case:english_lowercase", {}, "engravings are also called etchings.", True),
    ("change_case:english_lowercase", {}, "Engravings are also called etchings.", False),
    ("punctuation:no_comma", {}, "No commas here at all.", True),
    ("punctuation:no_comma", {}, "Well, there is one.", False),
    ("detectable_format:title", {}, "<<A Poem>>\nRoses are red.", True),
    ("detectable_format:title", {}, "A Poem\nRoses are red.", False),
    ("startend:end_checker", {"end_phrase": "Is there anything else I can help with?"},
     "Here it is. Is there anything else I can help with?", True),
    ("keywords:existence", {"keywords": ["banana", "apple"]}, "I like apple pie and banana bread.", True),
    ("keywords:existence", {"keywords": ["banana", "apple"]}, "I like apple pie.", False),
    ("length_constraints:number_words", {"num_words": 5, "relation": "less than"}, "Only four words here.", True),
    # Punkt with the official English abbreviations: 2 sentences, not 4.
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "less than"},
     "Dr. Smith moved to the U.S. in May. He likes it.", True),
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "less than"},
     "One. Two. Three. Four.", False),
])
def test_official_strict_verdicts(cache, instruction, kwargs, response, strict):
    verdict = score_response(doc([(instruction, kwargs)]), response, cache)
    assert verdict["prompt_level_strict_acc"] is strict
    assert verdict["inst_level_strict_acc"] == [strict]
    assert verdict["scorer_errors"] == []


def test_loose_accuracy_forgives_a_first_line_and_markdown(cache):
    verdict = score_response(doc([("change_case:english_lowercase", {})]), "Sure! Here it is:\nall lowercase words.", cache)
    assert verdict["prompt_level_strict_acc"] is False and verdict["prompt_level_loose_acc"] is True


def test_prompt_level_needs_every_instruction(cache):
    both = doc([("change_case:english_lowercase", {}), ("punctuation:no_comma", {})])
    verdict = score_response(both, "lowercase, but a comma", cache)
    assert verdict["inst_level_strict_acc"] == [True, False] and verdict["prompt_level_strict_acc"] is False


def test_an_empty_response_follows_nothing(cache):
    assert score_response(doc([("punctuation:no_comma", {})]), "   ", cache)["prompt_level_strict_acc"] is False


def test_a_checker_that_raises_scores_that_instruction_as_failed_and_says_so(cache, monkeypatch):
    from lm_eval.tasks.ifeval import instructions

    def broken(self, value):
        raise ValueError("checker broke")

    monkeypatch.setattr(instructions.CommaChecker, "check_following", broken)
    verdict = score_response(doc([("change_case:english_lowercase", {}), ("punctuation:no_comma", {})]), "fine text", cache)
    assert verdict["inst_level_strict_acc"] == [True, False]
    assert verdict["prompt_level_strict_acc"] is False
    assert verdict["scorer_errors"] == ["punctuation:no_comma: ValueError: checker broke"]


def test_the_mini_task_keeps_prompts_a_short_answer_can_satisfy():
    assert fits_budget(doc([("length_constraints:number_words", {"num_words": 300, "relation": "at least"})])) is False
    assert fits_budget(doc([("length_constraints:number_words", {"num_words": 300, "relation": "less than"})])) is True
    assert fits_budget(doc([("change_case:english_lowercase", {})])) is True


def test_punkt_data_nltk_refuses_stops_the_run_instead_of_failing_every_sentence_count(tmp_path):
    """NLTK 3.10 refuses hard-linked data files: a cache copied with ``cp -al`` must not score IFEval quietly lower."""
    import os

    import nltk

    from mergebench_builtins.data import punkt

    copy = ArtifactCache(tmp_path / "cache")
    folder = punkt.nltk_data(copy)
    english = folder / "tokenizers" / "punkt_tab" / "english"
    os.link(english / "abbrev_types.txt", tmp_path / "second-link")
    saved = list(nltk.data.path)
    try:
        with pytest.raises(punkt.PunktUnreadable, match=r"copied with hard links \(cp -al\).*delete"):
            punkt.install(copy)
    finally:
        nltk.data.path[:] = saved
    os.unlink(tmp_path / "second-link")  # one link again: readable
    assert punkt.install(copy) == folder
    nltk.data.path[:] = saved
