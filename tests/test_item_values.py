"""Per-item values: which items they are, how they are packed into a results file, and bad files."""

from __future__ import annotations

import base64
import json
from types import SimpleNamespace

import numpy as np
import pytest

from mergebench.errors import UsageError
from mergebench.evaluation.api import TaskResult
from mergebench.results import read_json, write_json
from mergebench.results.compact import Pool, decode, encode
from mergebench.results.items import fingerprint, item_list, item_values
from tests.item_results import binary, item_case
from tests.test_results import case

TASK = SimpleNamespace(name="ifeval_mini", version="2", metric="inst_level_strict_acc", options=(("limit", 16),))


def test_binary_values_pack_as_bits_and_others_as_float32():
    bits = encode([1, 0, 0, 1, 1, 1, 0, 0, 1])
    assert bits["enc"] == "bits" and base64.b64decode(bits["data"]) == bytes([0b10011100, 0b10000000])
    assert decode(bits, "x") == (1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0)
    floats = encode([0.5, 1.25, 3.0])
    assert floats["enc"] == "f32" and base64.b64decode(floats["data"]) == np.array([0.5, 1.25, 3.0], "<f4").tobytes()
    assert decode(floats, "x") == (0.5, 1.25, 3.0)
    assert decode(encode([3, 1, 2], integers=True), "x") == (3.0, 1.0, 2.0)


@pytest.mark.parametrize("blob, message", [
    ({"enc": "bits", "n": 20, "data": base64.b64encode(b"\xff").decode()}, "say n=20 but hold 1 bytes of bits"),
    ({"enc": "f64", "n": 1, "data": ""}, "unknown per-item encoding 'f64'"),
    ({"enc": "f32", "n": 1, "data": "not base64!"}, "malformed per-item values"),
])
def test_a_damaged_array_is_a_clear_error(blob, message):
    with pytest.raises(UsageError, match=message):
        decode(blob, "r.json: case m-soup-t")


def test_item_ids_come_from_the_samples_and_several_values_of_one_prompt_are_one_item():
    samples = [{"key": 1, "inst_level_strict_acc": [True, False]}, {"key": 7, "inst_level_strict_acc": [True]}]
    assert item_list(samples, 3, "inst_level_strict_acc") == (["1", "7"], (2, 1))
    turns = [{"question_id": 81, "turn": 1}, {"question_id": 81, "turn": 2}, {"question_id": 82, "turn": 1}]
    assert item_list(turns, 3, "rating") == (["81", "82"], (2, 1))  # MT-Bench: a question's two turns
    assert item_list([{"id": "a"}, {"id": "b"}], 2, "acc") == (['"a"', '"b"'], None)
    # samples that do not line up with the values (a judge left a turn unrated) or name no id: positions
    assert item_list(turns, 2, "rating") == (["#0", "#1"], None)
    assert item_list([{"response": "x"}], 1, "acc") == (["#0"], None)


def test_an_unrated_judged_turn_is_no_item_and_two_models_missing_different_turns_do_not_pair():
    def judged(ratings):
        return [{"question_id": q, "turn": t, "judge_score": r} for (q, t), r in zip(((81, 1), (81, 2), (82, 1)), ratings)]

    assert item_list(judged([7, None, 5]), 2, "judge_score") == (["81", "82"], None)  # 81's second turn unrated
    mt = SimpleNamespace(name="mt_bench", version="1", metric="judge_score", options=())

    def result(ratings):
        rated = [r for r in ratings if r is not None]
        return TaskResult("mt_bench", "judge_score", sum(rated) / len(rated), 0.0, len(rated), values=rated,
                          samples=judged(ratings))

    # the same count of rated turns, but not the same turns: pairing them by position would compare
    # question 81's second turn with question 82's first, so the case gets no interval instead
    assert item_values(mt, result([7, None, 5]), result([7, 6, None])) is None
    both = item_values(mt, result([7, None, 5]), result([8, None, 4]))
    assert both.merged == (7.0, 5.0) and both.expert == (8.0, 4.0)


def test_the_fingerprint_changes_with_the_items_and_the_task_version():
    one = fingerprint(TASK, ["1", "7"], (2, 1), 3)
    assert one == fingerprint(TASK, ["1", "7"], (2, 1), 3)
    assert one != fingerprint(TASK, ["1", "8"], (2, 1), 3)
    assert one != fingerprint(SimpleNamespace(**{**vars(TASK), "version": "3"}), ["1", "7"], (2, 1), 3)


def _result(values, ids):
    return TaskResult("t", "acc", sum(values) / max(len(values), 1), 0.0, len(values), values=list(values),
                      samples=[{"id": i} for i in ids])


def test_a_case_keeps_its_three_models_values_on_the_same_items_or_none():
    merged, expert = _result([1, 0, 1], "abc"), _result([1, 1, 1], "abc")
    found = item_values(TASK, merged, expert, _result([0, 0, 1], "abc"))
    assert found.merged == (1.0, 0.0, 1.0) and found.expert == (1.0, 1.0, 1.0) and found.base == (0.0, 0.0, 1.0)
    assert item_values(TASK, merged, expert, _result([0, 0, 1], "abd")) is None  # scored on other items
    assert item_values(TASK, merged, _result([], "")) is None  # a task that reports no per-item values


def test_a_results_file_stores_shared_values_once_and_reads_back_exactly(tmp_path):
    rng = np.random.default_rng(0)
    expert, base = binary(rng, 541, 0.8), binary(rng, 541, 0.5)
    results = [item_case("ifeval", "instruction", binary(rng, 541, 0.6), expert, base, method=m)
               for m in ("soup", "ties", "dare")] + [item_case("bpb", "math", rng.random(30), rng.random(30), method="soup")]
    path = write_json(results, tmp_path / "r.json")
    assert read_json(path) == results
    payload = json.loads(path.read_text())
    assert len(payload["item_values"]) == 3 + 2 + 2  # three merged, one expert, one base; the bpb task's two
    assert all(len(blob["data"]) <= 92 for blob in payload["item_values"].values() if blob["enc"] == "bits")  # 68 bytes
    assert {"lo", "hi"} <= set(payload["intervals"]["values"][0])


def test_an_older_results_file_reads_without_intervals(tmp_path):
    old = {"mergebench_results": 1, "meta": {}, "cases": [case("gsm8k", "math", merged=0.2, expert=0.4).to_dict()]}
    del old["cases"][0]["items"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    (loaded,) = read_json(tmp_path / "old.json")
    assert loaded.items is None and loaded.merged.score == 0.2


def test_a_hand_edited_file_with_mismatched_lengths_names_the_case_and_the_fix(tmp_path):
    path = write_json([item_case("t", "math", [1, 0, 1, 1], [1, 1, 1, 0])], tmp_path / "r.json")
    payload = json.loads(path.read_text())
    expert_ref = payload["cases"][0]["items"]["expert"]
    payload["item_values"][expert_ref] = encode([1, 1, 1])
    path.write_text(json.dumps(payload))
    with pytest.raises(UsageError, match=r"r.json: case m-soup-t: per-item values do not match: expert has 3, "
                                         r"where the case scored 4 values.*delete its 'items'"):
        read_json(path)
    for name in ("merged", "expert"):
        payload["item_values"][payload["cases"][0]["items"][name]] = encode([])
    payload["cases"][0]["merged"]["n"] = 0
    path.write_text(json.dumps(payload))
    with pytest.raises(UsageError, match="case m-soup-t: per-item values are empty"):
        read_json(path)
    payload["cases"][0]["items"]["expert"] = "0123456789abcdef"
    path.write_text(json.dumps(payload))
    with pytest.raises(UsageError, match="not in the file's 'item_values' pool"):
        read_json(path)
    path.write_text("{not json")
    with pytest.raises(UsageError, match=r"results file .* is not JSON .*; give a file written by pytest --mb-json FILE"):
        read_json(path)


def test_the_pool_stores_equal_arrays_once():
    pool = Pool()
    assert pool.put(encode([1, 0])) == pool.put(encode([1.0, 0.0])) and len(pool.blobs) == 1
