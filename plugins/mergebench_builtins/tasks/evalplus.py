"""HumanEval+ and MBPP+ pass@1 through evalplus (full suite).

Completions come from any mergebench backend with evalplus's own instruction prompt (the code
block opened in the assistant's turn); evalplus scores them against base and plus tests in a child
process (:mod:`mergebench.evaluation.evalplus_runner`). pass@1 with one greedy sample per problem
counts a problem as solved when both its base and plus tests pass. ``limit`` keeps the first N
problems (evalplus is pointed at a subset file, as its ``*_OVERRIDE_PATH`` variables allow). The
datasets download from GitHub the first time; offline, set ``HUMANEVAL_OVERRIDE_PATH`` /
``MBPP_OVERRIDE_PATH`` to local copies.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from mergebench.errors import DataUnavailableError, UsageError
from mergebench.evaluation.api import GenerationRequest, LanguageModel, Task, TaskResult

INSTRUCTION = "Please provide a self-contained Python script that solves the following problem in a markdown code block:"
RESPONSE = "Below is a Python script with a self-contained function that solves the problem and passes corresponding tests:"
OVERRIDE = {"humaneval": "HUMANEVAL_OVERRIDE_PATH", "mbpp": "MBPP_OVERRIDE_PATH"}


def load_problems(dataset: str) -> dict[str, dict]:
    try:
        from evalplus.data import get_human_eval_plus, get_mbpp_plus
    except ImportError:
        raise UsageError("HumanEval+/MBPP+ need evalplus: pip install 'mergebench[evalplus]'") from None
    try:
        return get_human_eval_plus() if dataset == "humaneval" else get_mbpp_plus()
    except Exception as exc:
        raise DataUnavailableError(
            f"evalplus could not load {dataset}+ ({type(exc).__name__}: {str(exc)[:200]}); it downloads from GitHub: "
            f"run with network access or set {OVERRIDE[dataset]} to a local copy of the dataset file") from None


class EvalPlus(Task):
    generates = True

    def prompt(self, lm: LanguageModel, problem: dict) -> str:
        ask = f"{INSTRUCTION}\n```\n{problem['prompt'].strip()}\n```"
        if lm.has_chat_template:
            return lm.chat_prompt([{"role": "user", "content": ask}]) + f"{RESPONSE}\n```python\n"
        return f"{ask}\n{RESPONSE}\n```python\n"

    def evaluate(self, lm: LanguageModel) -> TaskResult:
        dataset = self.options["dataset"]
        problems = load_problems(dataset)
        ids = list(problems)[: self.limit] if self.limit else list(problems)
        max_new = int(self.options.get("max_new_tokens", 768))
        completions = lm.generate([GenerationRequest(self.prompt(lm, problems[i]), max_new, ("```",)) for i in ids])
        with tempfile.TemporaryDirectory(prefix="mergebench-evalplus-") as work:
            work_path = Path(work)
            subset = work_path / f"{dataset}_subset.jsonl"
            with open(subset, "w", encoding="utf-8") as handle:
                for task_id in ids:
                    handle.write(json.dumps(_serializable(problems[task_id], dataset)) + "\n")
            samples = work_path / "samples.jsonl"
            with open(samples, "w", encoding="utf-8") as handle:
                for task_id, code in zip(ids, completions):
                    handle.write(json.dumps({"task_id": task_id, "solution": code}) + "\n")
            env = {**os.environ, OVERRIDE[dataset]: str(subset), "XDG_CACHE_HOME": str(work_path / "cache")}
            done = subprocess.run([sys.executable, "-m", "mergebench.evaluation.evalplus_runner", dataset, str(samples)],
                                  stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env,
                                  timeout=float(self.options.get("timeout", 3600)))
            results_file = work_path / "samples_eval_results.json"
            if not results_file.exists():
                raise UsageError(f"evalplus produced no results (exit {done.returncode}): {done.stderr.strip()[-500:]}")
            results = json.loads(results_file.read_text())["eval"]
        scores, samples_out = [], []
        for task_id, code in zip(ids, completions):
            row = results[task_id][0]
            solved = row["base_status"] == "pass" and row["plus_status"] == "pass"
            scores.append(float(solved))
            samples_out.append({"task_id": task_id, "solution": code, "base_status": row["base_status"],
                                "plus_status": row["plus_status"]})
        base = sum(s["base_status"] == "pass" for s in samples_out) / max(len(samples_out), 1)
        return self.result(scores, samples_out, base_pass_at_1=base)


def _serializable(problem: dict, dataset: str) -> dict:
    """The problem as a line of evalplus's dataset file (MBPP+ inputs re-serialized as evalplus stores them)."""
    row = dict(problem)
    if dataset == "mbpp":
        from evalplus.data.mbpp import mbpp_serialize_inputs

        row["base_input"] = mbpp_serialize_inputs(row["task_id"], row["base_input"])
        row["plus_input"] = mbpp_serialize_inputs(row["task_id"], row["plus_input"])
    return row
