"""The stage graph of a run: which artifacts the selected cases need, each once, and what each waits for.

A case needs its model's base, the experts (or the multi-task model), a data-aware method's
statistics, the hyperparameter search when ``--mb-search`` is on, the merge, and the evaluations of
the merged model, the base and the task's expert on its task. Cases of one model share the base
and the experts; cases of one merge share the merge; so the graph keeps one stage per artifact,
named by what determines it (model, domain, method, hyperparameters, task), and each case stage
depends on the stages whose artifacts it reads. Stage ids are the same in every process that
builds the graph from the same selection.

Plain data, built from the registries' specs at the driver without importing torch.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Sequence

from mergebench.case import MTL_METHOD, Case
from mergebench.specs import DOMAINS

KINDS = ("base", "train", "statistics", "search", "merge", "evaluate", "case")
"""Stage kinds in dependency order: a stage only waits for stages of earlier kinds."""


@dataclass(frozen=True)
class Stage:
    """One task of the graph: a pipeline stage that produces (or reads) one artifact.

    ``target`` of an ``evaluate`` stage is the id of the stage whose model it evaluates (or
    ``checkpoint:PATH``); ``params`` of statistics, search and merge stages are the case's
    hyperparameters as given (the worker resolves them as a local run does).
    """

    id: str
    kind: str
    model: str
    label: str
    deps: tuple[str, ...] = ()
    method: str = ""
    params: tuple[tuple[str, Any], ...] = ()
    domain: str = ""
    task: str = ""
    target: str = ""
    case: Case | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Stage":
        values = dict(data)
        values["deps"] = tuple(values.get("deps", ()))
        values["params"] = tuple(tuple(p) for p in values.get("params", ()))
        case = values.get("case")
        if case is not None:
            case = dict(case)
            case["params"] = tuple(tuple(p) for p in case.get("params", ()))
            values["case"] = Case(**case)
        return cls(**values)


@dataclass
class StageGraph:
    """Stages in an order where every stage comes after its dependencies, and the case stage of each case."""

    stages: dict[str, Stage] = field(default_factory=dict)
    cases: dict[str, str] = field(default_factory=dict)  # case id → its case stage's id, in the run's order

    def add(self, stage: Stage) -> str:
        missing = [d for d in stage.deps if d not in self.stages]
        if missing:
            raise ValueError(f"stage {stage.id} depends on {missing}, which are not in the graph yet")
        self.stages.setdefault(stage.id, stage)
        return stage.id

    def counts(self) -> dict[str, int]:
        found = Counter(s.kind for s in self.stages.values())
        return {kind: found[kind] for kind in KINDS if found[kind]}

    def upstream(self, stage_id: str) -> list[str]:
        """Every stage ``stage_id`` waits for, directly or not (in graph order)."""
        needed: set[str] = set()
        todo = [stage_id]
        while todo:
            for dep in self.stages[todo.pop()].deps:
                if dep not in needed:
                    needed.add(dep)
                    todo.append(dep)
        return [s for s in self.stages if s in needed]

    def first_case_of(self) -> dict[str, str]:
        """Each stage → the first case (in the run's order) that needs it.

        A serial run builds an artifact in the first case that reaches it; crediting a cluster
        build to that case keeps each case's cache record as a serial run would write it.
        """
        first: dict[str, str] = {}
        for case_id, case_stage in self.cases.items():
            for stage_id in (*self.upstream(case_stage), case_stage):
                first.setdefault(stage_id, case_id)
        return first

    def waves(self) -> list[list[Stage]]:
        """Stages grouped so that each group waits only for earlier groups (by longest path from a root)."""
        depth: dict[str, int] = {}
        for stage in self.stages.values():  # graph order: dependencies first
            depth[stage.id] = 1 + max((depth[d] for d in stage.deps), default=-1)
        groups: list[list[Stage]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
        for stage in self.stages.values():
            groups[depth[stage.id]].append(stage)
        return groups


def params_text(params: Sequence[tuple[str, Any]]) -> str:
    return json.dumps(dict(params), sort_keys=True, separators=(",", ":")) if params else ""


def build_graph(cases: Iterable[Case], registries, *, search: str = "none",
                computes_statistics: Callable[[str], bool] = lambda method: True) -> StageGraph:
    """The stage graph of ``cases`` (in the run's order).

    ``computes_statistics(method)`` says whether a method is data-aware (its statistics become
    stages of their own); deciding it imports the method's class, so the caller asks a worker.
    """
    graph = StageGraph()
    for case in cases:
        model = registries.models.get(case.model)
        task = registries.tasks.get(case.task)
        base = graph.add(Stage(f"base:{model.name}", "base", model.name, f"base {model.name}"))

        upstream: list[str] = []
        if case.checkpoint:
            target = f"checkpoint:{case.checkpoint}"
        elif case.method == MTL_METHOD:
            target = _trained(graph, model.name, base, MTL_METHOD)
        else:
            experts = tuple(_trained(graph, model.name, base, domain) for domain in model.domains)
            name = f"{model.name}/{case.method}"
            suffix = params_text(case.params)
            inputs: tuple[str, ...] = (base, *experts)
            if search != "none":
                inputs += (graph.add(Stage(f"search:{name}{suffix}", "search", model.name, f"search {name}", inputs,
                                           method=case.method, params=case.params)),)
                upstream.append(inputs[-1])
            elif computes_statistics(case.method):
                inputs += (graph.add(Stage(f"statistics:{name}{suffix}", "statistics", model.name, f"statistics {name}",
                                           inputs, method=case.method, params=case.params)),)
            target = graph.add(Stage(f"merge:{name}{suffix}", "merge", model.name, f"merge {name}", inputs,
                                     method=case.method, params=case.params))
        evaluated = [target, base]
        if task.domain in DOMAINS and task.domain in model.domains:
            evaluated.append(_trained(graph, model.name, base, task.domain))
        for model_stage in evaluated:
            upstream.append(graph.add(_evaluation(graph.stages.get(model_stage), model_stage, model.name, task.name)))
        if not target.startswith("checkpoint:"):
            upstream.insert(0, target)
        graph.cases[case.id] = graph.add(Stage(f"case:{case.id}", "case", model.name, f"case {case.id}",
                                               tuple(dict.fromkeys(upstream)), method=case.method, params=case.params,
                                               task=task.name, case=case))
    return graph


def _trained(graph: StageGraph, model: str, base: str, domain: str) -> str:
    label = f"multi-task model {model}" if domain == MTL_METHOD else f"expert {model}/{domain}"
    return graph.add(Stage(f"train:{model}/{domain}", "train", model, label, (base,), domain=domain))


def _evaluation(target: Stage | None, target_id: str, model: str, task: str) -> Stage:
    """The stage evaluating ``target``'s model on ``task``; it carries what names that model (a merge's
    method and hyperparameters, an expert's domain), so a worker finds it without the target stage."""
    if target is None:  # an existing checkpoint (--mb-checkpoint): nothing to wait for
        path = target_id.split(":", 1)[1]
        return Stage(f"evaluate:{target_id}@{task}", "evaluate", model, f"eval {path} on {task}", task=task, target=target_id)
    shown = {"base": model, "train": f"{model}/{target.domain}"}.get(target.kind, f"{model}/{target.method}")  # the pipeline's names
    return Stage(f"evaluate:{target_id}@{task}", "evaluate", model, f"eval {shown} on {task}", (target_id,),
                 method=target.method, params=target.params, domain=target.domain, task=task, target=target_id)
