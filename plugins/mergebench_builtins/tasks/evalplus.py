"""HumanEval+ and MBPP+ pass@1 with evalplus's data and checks, executed in mergebench's sandbox (full suite).

Completions come from any mergebench backend with evalplus's own instruction prompt (the code
block opened in the assistant's turn). evalplus computes the expected outputs from the canonical
solutions in a child process (:mod:`mergebench.evaluation.evalplus_runner`, benchmark code only);
each solution then runs in :mod:`mergebench.evaluation.sandbox` (no environment, no network, no
host filesystem), once against the base inputs and once against the plus inputs, judged by
evalplus's comparisons ported into the sandbox's driver (:mod:`mergebench.evaluation.evalplus_checks`)
instead of evalplus's in-process executor, whose verdict the solution could write. pass@1 with
one greedy sample per problem counts a problem as solved when both its base and plus tests pass.
``limit`` keeps the first N problems (evalplus is pointed at a subset file, as its
``*_OVERRIDE_PATH`` variables allow). The datasets download from GitHub the first time; offline,
set ``HUMANEVAL_OVERRIDE_PATH`` / ``MBPP_OVERRIDE_PATH`` to local copies.
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
from mergebench.evaluation.sandbox import VERSION as SANDBOX_VERSION
from mergebench.evaluation.sandbox import Limits, Outcome, Program, run_programs

INSTRUCTION = "Please provide a self-contained Python script that solves the following problem in a markdown code block:"
RESPONSE = "Below is a Python script with a self-contained function that solves the problem and passes corresponding tests:"
OVERRIDE = {"humaneval": "HUMANEVAL_OVERRIDE_PATH", "mbpp": "MBPP_OVERRIDE_PATH"}
MEMORY_MB = 4096  # evalplus's default EVALPLUS_MAX_MEMORY_BYTES
RUNNER_ENV = ("PATH", "HOME", "LANG", "PYTHONPATH")  # what the expected-output child keeps of our environment
STATUS = {"passed": "pass", "timeout": "timeout"}  # evalplus's words; everything else is "fail"


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

    def fingerprint(self) -> dict:
        return {**super().fingerprint(), "executor": "mergebench-sandbox", "sandbox": SANDBOX_VERSION}

    def evaluate(self, lm: LanguageModel) -> TaskResult:
        dataset = self.options["dataset"]
        problems = load_problems(dataset)
        ids = list(problems)[: self.limit] if self.limit else list(problems)
        max_new = int(self.options.get("max_new_tokens", 768))
        completions = lm.generate([GenerationRequest(self.prompt(lm, problems[i]), max_new, ("```",)) for i in ids])
        checks = expected_checks(dataset, [problems[i] for i in ids], float(self.options.get("timeout", 3600)))
        jobs = [(i, task_id, part) for i, task_id in enumerate(ids) for part in ("base", "plus")
                if "tests" in checks[task_id][part]]
        outcomes = dict(zip([(task_id, part) for _, task_id, part in jobs], run_programs(
            [Program(completions[i], checks[task_id][part]["tests"]) for i, task_id, part in jobs],
            [Limits(timeout=checks[task_id][part]["timeout"], memory_mb=MEMORY_MB) for _, task_id, part in jobs])))
        scores, samples_out = [], []
        for task_id, code in zip(ids, completions):
            row = {"task_id": task_id, "solution": code}
            for part in ("base", "plus"):  # a part without tests: its data could not be written as literals
                outcome = outcomes.get((task_id, part)) or Outcome("failed", f"unscorable: {checks[task_id][part].get('error')}")
                row[f"{part}_status"] = STATUS.get(outcome.status, "fail")
                row[f"{part}_detail"] = outcome.detail
            scores.append(float(row["base_status"] == row["plus_status"] == "pass"))
            samples_out.append(row)
        base = sum(s["base_status"] == "pass" for s in samples_out) / max(len(samples_out), 1)
        return self.result(scores, samples_out, base_pass_at_1=base)


def expected_checks(dataset: str, problems: list[dict], timeout: float) -> dict:
    """Each problem's base and plus checks, from evalplus's expected outputs computed in a child process."""
    with tempfile.TemporaryDirectory(prefix="mergebench-evalplus-") as work:
        work_path = Path(work)
        subset = work_path / f"{dataset}_subset.jsonl"
        with open(subset, "w", encoding="utf-8") as handle:
            for problem in problems:
                handle.write(json.dumps(_serializable(problem, dataset)) + "\n")
        out = work_path / "checks.json"
        env = {k: os.environ[k] for k in RUNNER_ENV if k in os.environ}
        env.update({OVERRIDE[dataset]: str(subset), "XDG_CACHE_HOME": str(work_path / "cache")})
        done = subprocess.run([sys.executable, "-m", "mergebench.evaluation.evalplus_runner", dataset, str(out)],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, timeout=timeout)
        if not out.exists():
            raise UsageError(f"evalplus computed no expected outputs (exit {done.returncode}): {done.stderr.strip()[-500:]}")
        return json.loads(out.read_text())


def _serializable(problem: dict, dataset: str) -> dict:
    """The problem as a line of evalplus's dataset file (MBPP+ inputs re-serialized as evalplus stores them)."""
    row = dict(problem)
    if dataset == "mbpp":
        from evalplus.data.mbpp import mbpp_serialize_inputs

        row["base_input"] = mbpp_serialize_inputs(row["task_id"], row["base_input"])
        row["plus_input"] = mbpp_serialize_inputs(row["task_id"], row["plus_input"])
    return row
