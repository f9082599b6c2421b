"""Tasks scored by lm-evaluation-harness: its task definitions, prompts and scorers, our model.

Where lm-eval has a benchmark of the study, mergebench runs lm-eval's task by name rather than
re-implementing it. The model reaches lm-eval through :class:`LmEvalAdapter`, an lm-eval ``LM``
over any mergebench backend, so lm-eval's tasks run on the same engine as the mini suite (the HF
backend's batching and shared-context scoring, or vLLM) and a merged model is evaluated from
memory. Options of the :class:`~mergebench.specs.TaskSpec`:

``lm_eval_task``  lm-eval task or group name (e.g. ``gsm8k_cot``, ``m_mmlu_fr``, ``mmlu``)
``metric``        result key without filter (e.g. ``exact_match``, ``acc_norm``)
``filter``        lm-eval filter name of the metric (default ``none``)
``num_fewshot``   shots (default: the task's own)
``chat``          apply the chat template when the model has one (default true)
``include_path``  a folder of task YAMLs to use *instead of* lm-eval's built-in index (local
                  fixtures, private tasks); indexing lm-eval's ~14k YAMLs takes ~15 s, done once
                  per process
"""

from __future__ import annotations

import functools
from typing import Any

from mergebench.errors import DataUnavailableError, UsageError
from mergebench.evaluation.api import GenerationRequest, LanguageModel, LoglikelihoodRequest, Task, TaskResult


def _task_score(results: dict[str, Any], name: str, metric: str, filter_name: str) -> tuple[float, float]:
    key = f"{metric},{filter_name}"
    if name in results and key in results[name]:
        value = results[name][key]
        stderr = results[name].get(f"{metric}_stderr,{filter_name}", 0.0)
        return float(value), float(stderr if isinstance(stderr, (int, float)) else 0.0)
    raise UsageError(f"lm-eval returned no {key!r} for {name!r}; available: {sorted(results.get(name, {}))}")


@functools.lru_cache(maxsize=4)
def task_manager(include_path: str | None = None):
    """lm-eval's task index (built once per process and include path)."""
    from lm_eval.tasks import TaskManager

    if include_path:
        return TaskManager(include_path=include_path, include_defaults=False)
    return TaskManager()


def _lm_eval_base():
    from lm_eval.api.model import LM

    return LM


def adapter(lm: LanguageModel):
    """``lm`` as an lm-eval ``LM`` (loglikelihood, loglikelihood_rolling, generate_until, chat template)."""
    base = _lm_eval_base()

    class LmEvalAdapter(base):
        def __init__(self) -> None:
            super().__init__()
            self.lm = lm

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            results = self.lm.loglikelihood([LoglikelihoodRequest(*r.args) for r in requests])
            return [(r.logprob, r.is_greedy) for r in results]

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            results = self.lm.loglikelihood([LoglikelihoodRequest("", r.args[0]) for r in requests])
            return [r.logprob for r in results]

        def generate_until(self, requests, disable_tqdm: bool = False):
            converted = []
            for request in requests:
                context, kwargs = request.args
                kwargs = dict(kwargs or {})
                if kwargs.get("do_sample") and float(kwargs.get("temperature", 1.0) or 0.0) > 0:
                    raise UsageError("mergebench evaluates greedily; this lm-eval task asks for sampling")
                until = kwargs.get("until") or []
                until = [until] if isinstance(until, str) else list(until)
                converted.append(GenerationRequest(context, int(kwargs.get("max_gen_toks", 256)), tuple(until)))
            return self.lm.generate(converted)

        def apply_chat_template(self, chat_history, add_generation_prompt: bool = True) -> str:
            return self.lm.chat_prompt(chat_history)

        @property
        def tokenizer_name(self) -> str:
            return getattr(self.lm, "name", "model")

        def chat_template(self, chat_template=False):
            tokenizer = getattr(self.lm, "tokenizer", None)
            return getattr(tokenizer, "chat_template", None) or ""

    return LmEvalAdapter()


def _sample_count(output: dict[str, Any], name: str) -> int:
    """Documents scored: lm-eval's effective count for a task, summed over a group's subtasks."""
    counts = output.get("n-samples", {})
    if name in counts:
        return int(counts[name].get("effective", 0))
    members = output.get("group_subtasks", {}).get(name, [])
    if members:
        return sum(_sample_count(output, m) for m in members)
    return len({s.get("doc_id") for s in output.get("samples", {}).get(name, [])})


class LmEvalTask(Task):
    def fingerprint(self) -> dict[str, Any]:
        import lm_eval

        return {**super().fingerprint(), "lm_eval": getattr(lm_eval, "__version__", "?")}

    def evaluate(self, lm: LanguageModel) -> TaskResult:
        from lm_eval import simple_evaluate

        name = self.options["lm_eval_task"]
        metric = self.options["metric"]
        filter_name = self.options.get("filter", "none")
        chat = bool(self.options.get("chat", True)) and lm.has_chat_template
        manager = task_manager(self.options.get("include_path"))
        if name not in manager.all_tasks:
            raise UsageError(f"lm-eval {getattr(__import__('lm_eval'), '__version__', '?')} has no task {name!r}")
        try:
            output = simple_evaluate(
                model=adapter(lm),
                tasks=[name],
                num_fewshot=self.options.get("num_fewshot"),
                limit=self.limit,
                apply_chat_template=chat,
                fewshot_as_multiturn=chat and self.options.get("num_fewshot") not in (None, 0),
                log_samples=True,
                bootstrap_iters=1000,
                task_manager=manager,
            )
        except ImportError as exc:
            raise UsageError(f"lm-eval task {name!r} cannot run here: {type(exc).__name__}: {exc} "
                             "(a dependency of its scorer is missing or incompatible)") from None
        except Exception as exc:
            if _is_unreachable(exc):
                raise DataUnavailableError(
                    f"lm-eval could not load the data of {name!r} ({type(exc).__name__}: {str(exc)[:200]}); it "
                    "downloads from the Hugging Face Hub: run on a machine with hub access or pre-populate "
                    "HF_DATASETS_CACHE"
                ) from None
            raise
        score, stderr = _task_score(output["results"], name, metric, filter_name)
        n = _sample_count(output, name)
        rows = _scored_rows(output, filter_name)
        samples = [{"task": s["_task"], "doc_id": [s["_task"], s.get("doc_id")], "filtered_resps": s.get("filtered_resps")}
                   for s in rows]
        values = _item_values(rows, metric, score, n)
        return TaskResult(task=self.spec.name, metric=self.spec.metric, score=score, stderr=stderr, n=n,
                          higher_is_better=self.spec.higher_is_better, samples=samples, values=values,
                          extras={"lm_eval_task": name, "chat_template": chat})


def _scored_rows(output: dict[str, Any], filter_name: str) -> list[dict[str, Any]]:
    """lm-eval's logged samples of the reported filter, in (task, document) order, each tagged with its task."""
    rows = []
    for task, logged in sorted(output.get("samples", {}).items()):
        for row in logged:
            if row.get("filter", filter_name) == filter_name:
                rows.append({**row, "_task": task})
    return sorted(rows, key=lambda r: (r["_task"], r.get("doc_id") if isinstance(r.get("doc_id"), int) else -1))


def _item_values(rows: list[dict[str, Any]], metric: str, score: float, n: int) -> list[float]:
    """Per-document values of ``metric``, or none when lm-eval's score is not their mean.

    lm-eval logs each document's metric; for a mean-aggregated metric (accuracy, exact match, a
    group weighted by size) their mean is the reported score, and the intervals and paired gate
    resample them as they do our own tasks'. A corpus-level metric (BLEU, perplexity) or a group
    averaged otherwise has no such values: the case is then reported without an interval, as
    before, rather than with one the score does not rest on.
    """
    values = [row.get(metric) for row in rows]
    if len(values) != n or not values or not all(isinstance(v, (int, float)) for v in values):
        return []
    values = [float(v) for v in values]
    return values if abs(sum(values) / len(values) - score) <= 1e-6 * max(1.0, abs(score)) else []


def _is_unreachable(exc: BaseException) -> bool:
    """A dataset download that failed (offline, no such repository, gated), as ``datasets``/hub raise it."""
    names = {type(e).__name__ for e in _chain(exc)}
    unreachable = {"ConnectionError", "OfflineModeIsEnabled", "DatasetNotFoundError", "HFValidationError",
                   "LocalEntryNotFoundError", "RepositoryNotFoundError", "GatedRepoError", "HfHubHTTPError",
                   "DataFilesNotFoundError", "FileNotFoundError"}
    return bool(names & unreachable) or isinstance(exc, (ConnectionError, OSError))


def _chain(exc: BaseException):
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__
