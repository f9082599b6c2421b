"""The interface between tasks and the models they evaluate.

A :class:`Task` asks a :class:`LanguageModel` for two things only, the two request kinds of
lm-eval's model interface: greedy generations until a stop string, and log-likelihoods of
continuations. Backends (Hugging Face in-process, vLLM on GPU) implement those two calls;
tasks never touch torch, so one task runs on every backend.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from mergebench.errors import UsageError
from mergebench.specs import TaskSpec


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    max_new_tokens: int = 256
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class LoglikelihoodRequest:
    context: str
    continuation: str


@dataclass(frozen=True)
class Loglikelihood:
    logprob: float  # sum over continuation tokens, natural log
    n_tokens: int
    is_greedy: bool


class LanguageModel(ABC):
    """A model as tasks see it."""

    name: str = "model"

    @property
    @abstractmethod
    def has_chat_template(self) -> bool: ...

    @abstractmethod
    def chat_prompt(self, messages: Sequence[Mapping[str, str]]) -> str:
        """``messages`` rendered with the model's chat template, ending with the assistant turn's start."""

    @abstractmethod
    def generate(self, requests: Sequence[GenerationRequest]) -> list[str]:
        """Greedy continuations, each cut at its first stop string (which is not included)."""

    @abstractmethod
    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[Loglikelihood]: ...


class ForwardingModel(LanguageModel):
    """Another model as tasks see it, but for the calls a subclass overrides (``generate``, ``loglikelihood``).

    Why: the search runs tasks against stand-ins of its resident model (a proxy that gathers calls
    round by round, a counter of request text); chat prompts, and whatever else a task reads off its
    model (a tokenizer, say), must still be the resident model's.
    """

    def __init__(self, lm: LanguageModel) -> None:
        self._lm = lm
        self.name = lm.name

    @property
    def has_chat_template(self) -> bool:
        return self._lm.has_chat_template

    def chat_prompt(self, messages: Sequence[Mapping[str, str]]) -> str:
        return self._lm.chat_prompt(messages)

    def __getattr__(self, name: str):
        return getattr(self._lm, name)


RowListener = Callable[[list[GenerationRequest]], None]
"""Called with the requests a generation batch's rows hold, in row order, before each forward pass."""


class RowTrackingModel(LanguageModel):
    """A model in this process whose generation tells, before every forward pass, which request each row holds.

    Why: the search's shared decoding (:mod:`mergebench.search.shared_decoding`) puts rows of
    several weight variants in one batch, hooks the layers of ``model`` (the torch module
    holding the weights) and must know which row is which as finished rows leave the batch.
    Other models are evaluated one variant at a time.
    """

    model: Any
    tokenizer: Any
    device: str
    batch_size: int

    @abstractmethod
    def generate(self, requests: Sequence[GenerationRequest], *, keep_order: bool = False, batch_size: int | None = None,
                 row_listener: RowListener | None = None) -> list[str]:
        """Greedy continuations, as :meth:`LanguageModel.generate`.

        ``keep_order``: batches of consecutive requests (not sorted by prompt length);
        ``batch_size``: rows of one batch in this call (default: the model's own);
        ``row_listener``: told each batch's rows before every forward pass.
        """


@dataclass
class TaskResult:
    """A task's score on one model, with its item count and the standard error of the mean."""

    task: str
    metric: str
    score: float
    stderr: float
    n: int
    higher_is_better: bool = True
    samples: list[dict[str, Any]] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)
    values: list[float] = field(default_factory=list)  # per-item scores, in item order (hyperparameter search)
    soft_values: list[float] = field(default_factory=list)
    """Per item, a continuous stand-in for its score in [0, 1] (the probability the model gives the gold
    answer), where the task has one: the search orders points whose scores tie by it, since on a few
    items accuracies tie far more often than they differ (empty: the task has none)."""

    def as_dict(self, with_samples: bool = False) -> dict[str, Any]:
        data = {
            "task": self.task,
            "metric": self.metric,
            "score": self.score,
            "stderr": self.stderr,
            "n": self.n,
            "higher_is_better": self.higher_is_better,
            "extras": self.extras,
            "values": self.values,
        }
        if self.soft_values:
            data["soft_values"] = self.soft_values
        if with_samples:
            data["samples"] = self.samples
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TaskResult":
        return cls(
            task=data["task"], metric=data["metric"], score=data["score"], stderr=data["stderr"], n=data["n"],
            higher_is_better=data.get("higher_is_better", True), samples=list(data.get("samples", [])),
            extras=dict(data.get("extras", {})), values=list(data.get("values", [])),
            soft_values=list(data.get("soft_values", [])),
        )


def mean_stderr(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (sample standard deviation / √n), as lm-eval reports."""
    n = len(values)
    if n == 0:
        raise ValueError("no values to average")
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(variance / n)


class Task(ABC):
    """Base class of evaluation tasks.

    Subclasses set how many items they score by default (``default_limit``) and implement
    :meth:`items` (the fixed evaluation items; data is fetched here) and :meth:`evaluate`.
    ``limit`` from the command line shortens the item list (a smoke run), and is part of the
    evaluation's cache key. A task that sets ``supports_start`` scores the items ``[start, stop)``
    of that list, which the search narrows with :meth:`item_range`.
    """

    default_limit: int | None = None
    start: int = 0
    supports_start: bool = False
    generates: bool = False
    """Whether items are scored from generated text: each costs a point of the search its own decode
    steps (see :data:`mergebench.search.objective.GENERATION_FROM`), where a log-likelihood item costs one pass."""

    def __init__(self, spec: TaskSpec, context: Any, limit: int | None = None) -> None:
        self.spec = spec
        self.context = context
        self.options = dict(spec.options)
        # a spec may size its task (option ``limit``: the same class serves the mini and full suites)
        self.limit = limit if limit is not None else self.options.get("limit", self.default_limit)
        self.stop: int | None = self.limit  # the end of the items scored (None: all)

    def item_range(self, start: int, stop: int) -> "Task":
        """Score only the items ``[start, stop)`` of this task's list (the search's unit ranges)."""
        if not self.supports_start:
            raise UsageError(f"task {self.spec.name!r} cannot score an item range (it does not set supports_start)")
        self.start, self.stop = start, stop
        return self

    def fingerprint(self) -> dict[str, Any]:
        """What identifies the data this task scores (part of the evaluation cache key)."""
        return {"limit": self.limit, "options": self.options}

    def check_model(self, lm: LanguageModel) -> None:
        if self.spec.needs_chat_template and not lm.has_chat_template:
            raise UsageError(
                f"task {self.spec.name!r} prompts with a chat template but model {lm.name!r} has none; "
                "evaluate an instruct model, or add a chat_template to its tokenizer_config.json"
            )

    @abstractmethod
    def evaluate(self, lm: LanguageModel) -> TaskResult: ...

    def result(self, per_item: Sequence[float], samples: list[dict[str, Any]], *,
               soft_values: Sequence[float] = (), **extras: Any) -> TaskResult:
        """``soft_values``: see :attr:`TaskResult.soft_values`; one per item when given."""
        score, stderr = mean_stderr(per_item)
        if soft_values and len(soft_values) != len(per_item):
            raise ValueError(f"{len(soft_values)} soft values for {len(per_item)} items")
        return TaskResult(task=self.spec.name, metric=self.spec.metric, score=score, stderr=stderr, n=len(per_item),
                          higher_is_better=self.spec.higher_is_better, samples=samples, extras=dict(extras),
                          values=[float(v) for v in per_item], soft_values=[float(v) for v in soft_values])
