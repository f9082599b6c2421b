"""The GSM8K mini tasks: answer extraction, reference solutions, and the eval/train split."""

from __future__ import annotations

import pytest

from mergebench.evaluation.answers import final_number
from mergebench_builtins.data.splits import split_ids
from mergebench_builtins.tasks.gsm8k import reference_solution


@pytest.mark.parametrize("text, expected", [
    ("so 3 + 4 = 7. The answer is 7.", "7"),
    ("The answer is $1,250.00 in total", "1250"),
    ("we get 12 apples and 5 pears, 17 fruit", "17"),
    ("The answer is -3.", "-3"),
    ("The answer is 2.50", "2.5"),
    ("I don't know", None),
])
def test_extract_answer(text, expected):
    assert final_number(text) == expected


def test_reference_solution_drops_calculator_annotations():
    doc = {"answer": "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\n#### 18"}
    assert reference_solution(doc) == "Janet sells 16 - 3 - 4 = 9 duck eggs a day.\nThe answer is 18."


def test_split_is_disjoint_complete_and_stable():
    ids = list(range(1319))
    eval_ids, train_ids = split_ids(ids, 100, "gsm8k-test-v1")
    assert len(eval_ids) == 100 and not set(eval_ids) & set(train_ids)
    assert sorted(eval_ids + train_ids) == ids
    assert split_ids(ids, 100, "gsm8k-test-v1") == (eval_ids, train_ids)
    assert split_ids(ids, 100, "gsm8k-test-v2")[0] != eval_ids
