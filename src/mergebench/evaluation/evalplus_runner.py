"""Compute evalplus's expected outputs in a child process and write each problem's checks.

``python -m mergebench.evaluation.evalplus_runner DATASET CHECKS.json`` (the dataset file comes
from ``HUMANEVAL_OVERRIDE_PATH`` / ``MBPP_OVERRIDE_PATH``, evalplus's cache from ``XDG_CACHE_HOME``).

This process runs only the benchmark's own canonical solutions (evalplus's ``get_groundtruth``),
never generated code: that goes to :mod:`mergebench.evaluation.sandbox` with the checks written
here (:mod:`mergebench.evaluation.evalplus_checks`). It is a child because evalplus prints,
imports numpy and leaves threads behind; ``os._exit`` once the file is written ends all of that.

Output: ``{task_id: {"base": {"tests", "timeout"} | {"error"}, "plus": ...}}``.
"""

from __future__ import annotations

import json
import os
import sys

from mergebench.evaluation.evalplus_checks import check_program


def checks(dataset: str) -> dict:
    from evalplus.data import get_human_eval_plus, get_human_eval_plus_hash, get_mbpp_plus, get_mbpp_plus_hash
    from evalplus.eval._special_oracle import MBPP_OUTPUT_NOT_NONE_TASKS
    from evalplus.evaluate import get_groundtruth

    if dataset == "humaneval":
        problems, digest, not_none = get_human_eval_plus(), get_human_eval_plus_hash(), []
    else:
        problems, digest, not_none = get_mbpp_plus(), get_mbpp_plus_hash(), MBPP_OUTPUT_NOT_NONE_TASKS
    expected = get_groundtruth(problems, digest, not_none)
    found = {}
    for task_id, problem in problems.items():
        found[task_id] = {}
        for part in ("base", "plus"):
            oracle = expected[task_id]
            try:
                found[task_id][part] = check_program(dataset, problem, problem[f"{part}_input"], oracle[part],
                                                     oracle[f"{part}_time"])
            except TypeError as exc:  # an input or output that is not a plain value
                found[task_id][part] = {"error": str(exc)}
    return found


def main() -> None:
    dataset, out = sys.argv[1], sys.argv[2]
    with open(out, "w", encoding="utf-8") as handle:
        json.dump(checks(dataset), handle)
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
