"""Case results, the study's normalizations, and their JSON form.

Normalized performance (the study's Section 4.1, after Ilharco et al.): a merged model's score
on a task divided by the score of the expert of that task's domain. Forgetting (Section 4.2):
the merged model's score on a general task divided by the base model's. For metrics where
lower is better (bits per byte) the ratio is inverted, so 1.0 always means "as good as the
reference" and less means worse.

Within a domain, the domain score is the mean of its tasks' scores, and the domain's
normalized score is ``merged domain score / expert domain score`` (the study's tables report
per-domain numbers). When a domain mixes metric directions, a ratio of means is meaningless,
so the mean of the tasks' normalized scores is used instead (and flagged).

A case also keeps its models' per-item values (:mod:`mergebench.results.items`), from which
:mod:`mergebench.results.uncertainty` puts an interval on every one of these values; results files
written before that (``mergebench_results: 1``) read as cases without them.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from mergebench.errors import UsageError
from mergebench.results.items import ItemValues
from mergebench.specs import GENERAL

if TYPE_CHECKING:
    from mergebench.results.compact import Pool
    from mergebench.results.uncertainty import Bootstrap

FORMAT = 2
"""Version of the results file: 2 added per-item values (an ``item_values`` pool) and ``intervals``."""


def ratio(score: float | None, reference: float | None, higher_is_better: bool) -> float | None:
    """``score`` relative to ``reference`` (1.0 = equal, < 1 worse), or None when undefined."""
    if score is None or reference is None:
        return None
    if higher_is_better:
        return score / reference if reference > 0 else None
    return reference / score if score > 0 else None


@dataclass
class Score:
    score: float
    stderr: float
    n: int

    @classmethod
    def of(cls, data: Mapping[str, Any] | None) -> "Score | None":
        return None if data is None else cls(data["score"], data["stderr"], data["n"])


@dataclass
class CaseResult:
    """Everything one benchmark case produced; serialized as one JSON object."""

    case_id: str
    model: str
    method: str
    task: str
    domain: str
    metric: str
    higher_is_better: bool
    params: dict[str, Any]
    merged: Score
    expert: Score | None
    base: Score | None
    reference: str  # "expert" or "base"
    normalized: float | None
    merge_seconds: float
    validation_seconds: float = 0.0
    suite: str = ""
    task_version: str = ""
    method_version: str = ""
    semantics: str = "paper"  # the methods as published, or as the study's released code (results of runs before: paper)
    keys: dict[str, str] = field(default_factory=dict)
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    device: dict[str, Any] = field(default_factory=dict)
    items: ItemValues | None = None  # per-item values of merged, expert and base; None in older results

    def role_score(self, role: str) -> Score | None:
        return {"merged": self.merged, "expert": self.expert, "base": self.base}[role]

    def to_dict(self, pool: "Pool | None" = None) -> dict[str, Any]:
        """The case as JSON-ready data; per-item values inline, or as references into ``pool``."""
        data = asdict(self)
        data["items"] = None if self.items is None else self.items.to_dict(pool)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], pool: "Pool | None" = None, where: str = "results") -> "CaseResult":
        values = dict(data)
        for name in ("merged", "expert", "base"):
            values[name] = Score.of(values.get(name))
        known = set(cls.__dataclass_fields__)
        case = cls(**{k: v for k, v in values.items() if k in known and k != "items"})
        if values.get("items") is not None:
            where = f"{where}: case {case.case_id}"
            case.items = ItemValues.from_dict(values["items"], where, pool)
            case.items.check(where, case.merged.n)
        return case


@dataclass(frozen=True)
class DomainScore:
    domain: str
    merged: float
    reference: float | None
    normalized: float | None
    mixed_directions: bool = False


def domain_scores(results: Sequence[CaseResult]) -> list[DomainScore]:
    """Per-domain scores of one (model, method), in the order domains first appear."""
    by_domain: dict[str, list[CaseResult]] = {}
    for r in results:
        by_domain.setdefault(r.domain, []).append(r)
    out = []
    for domain, rows in by_domain.items():
        merged = sum(r.merged.score for r in rows) / len(rows)
        refs = [(r.expert if r.reference == "expert" else r.base) for r in rows]
        directions = {r.higher_is_better for r in rows}
        if None in refs:
            out.append(DomainScore(domain, merged, None, None))
            continue
        reference = sum(s.score for s in refs) / len(refs)  # type: ignore[union-attr]
        if len(directions) == 1:
            out.append(DomainScore(domain, merged, reference, ratio(merged, reference, directions.pop())))
        else:
            ratios = [r.normalized for r in rows]
            value = None if None in ratios else sum(ratios) / len(ratios)  # type: ignore[arg-type]
            out.append(DomainScore(domain, merged, reference, value, mixed_directions=True))
    return out


def overall_normalized(results: Sequence[CaseResult], *, forgetting: bool = False) -> float | None:
    """Mean over domains of the normalized domain scores (multi-task), or over general tasks (forgetting)."""
    rows = [r for r in results if (r.domain == GENERAL) == forgetting]
    values = [d.normalized for d in domain_scores(rows)] if not forgetting else [r.normalized for r in rows]
    if not values or None in values:
        return None
    return sum(values) / len(values)  # type: ignore[arg-type]


def group_by_model_method(results: Iterable[CaseResult]) -> dict[tuple[str, str], list[CaseResult]]:
    groups: dict[tuple[str, str], list[CaseResult]] = {}
    for r in results:
        groups.setdefault((r.model, r.method), []).append(r)
    return groups


def write_json(results: Sequence[CaseResult], path: Path | str, *, meta: Mapping[str, Any] | None = None,
               boot: "Bootstrap | None" = None) -> Path:
    """Write ``results`` atomically (temp file, then rename), with every value's interval (from ``boot``, if given)."""
    from mergebench.results.compact import Pool
    from mergebench.results.uncertainty import summary

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pool = Pool()
    cases = [r.to_dict(pool) for r in results]
    payload = {"mergebench_results": FORMAT, "meta": dict(meta or {}), "cases": cases, "item_values": pool.blobs,
               "intervals": summary(results, boot)}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True))
    os.replace(tmp, path)
    return path


RESULTS_FIX = "give a file written by pytest --mb-json FILE or --mb-save TAG"


def read_json(path: Path | str, what: str = "results file") -> list[CaseResult]:
    """The cases of a results file of any format, or one line saying why it is not one (``what`` names the option).

    The one reader of results files: the command line and pytest's ``--mb-compare`` both call it.
    """
    return read_results(path, what)[0]


def read_results(path: Path | str, what: str = "results file") -> tuple[list[CaseResult], dict[str, Any]]:
    """:func:`read_json`'s cases and the file's ``meta`` (the run's commit, machine, options), from one parse."""
    from mergebench.results.compact import Pool

    path = Path(path)
    if not path.exists():
        raise UsageError(f"{what} {path} does not exist; {RESULTS_FIX}")
    if not path.is_file():
        raise UsageError(f"{what} {path} is a folder, not a results file; {RESULTS_FIX}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{what} {path} is not text, so not a mergebench results file; {RESULTS_FIX}") from None
    except OSError as exc:  # a permission, a vanished file
        raise UsageError(f"{what} {path} cannot be read ({exc.strerror or exc})") from None
    if not text.strip():
        raise UsageError(f"{what} {path} is empty, not a mergebench results file; {RESULTS_FIX}")
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{what} {path} is not JSON ({exc}); {RESULTS_FIX}") from None
    if not isinstance(data, dict) or not isinstance(data.get("cases"), list):
        raise UsageError(f"{what} {path} is JSON but not a mergebench results file (no list of 'cases'); {RESULTS_FIX}")
    pool = data.get("item_values") or {}
    if not isinstance(pool, dict):
        raise UsageError(f"{what} {path}: its 'item_values' is not a mapping of per-item arrays; {RESULTS_FIX}")
    pool = Pool(pool)
    results = []
    for i, case in enumerate(data["cases"]):
        try:
            results.append(CaseResult.from_dict(case, pool, where=f"{what} {path}"))
        except (TypeError, KeyError, ValueError, AttributeError) as exc:
            raise UsageError(f"{what} {path}: case {i} is not a mergebench result ({exc}); {RESULTS_FIX}") from None
    meta = data.get("meta")
    return results, meta if isinstance(meta, dict) else {}
