"""Which items a case was scored on, and each model's score on every one of them.

Intervals and paired comparisons need the per-item scores of the merged model, its expert and the
base *on the same items*: one resample of the items then moves all three together (and every
method of a model on that task, and a baseline run saved on the same items). A case therefore
keeps :class:`ItemValues`: the three models' values in item order, and a fingerprint of the item
list so that two runs on different items are never paired by mistake.

An *item* is what gets resampled. Usually one value is one item; IFEval's instruction-level score
has several values (instructions) per prompt, which are not independent, so a prompt is one item
holding all its instructions (the clustered standard errors of Miller 2024, "Adding Error Bars
to Evals"). A sample whose field named after the metric is a list contributes that many values;
consecutive samples with the same id (MT-Bench's two turns of a question) form one item.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from mergebench.errors import UsageError

if TYPE_CHECKING:  # numpy and the encoding load when values are used, not when results are imported
    import numpy as np

    from mergebench.results.compact import Pool

ID_FIELDS = ("id", "key", "doc_id", "question_id", "task_id", "prompt", "text", "question")
"""Sample fields that identify an item, in order of preference (tasks name them differently)."""

ROLES = ("merged", "expert", "base")


@dataclass(frozen=True)
class ItemValues:
    """Per-item scores of a case's merged model and its references, on the same items, in item order."""

    fingerprint: str
    merged: tuple[float, ...]
    expert: tuple[float, ...] | None = None
    base: tuple[float, ...] | None = None
    clusters: tuple[int, ...] | None = None  # values per item when an item holds several; None: one each

    @property
    def items(self) -> int:
        """How many items (resampling units) the values come from."""
        return len(self.clusters) if self.clusters is not None else len(self.merged)

    def role(self, name: str) -> tuple[float, ...] | None:
        return {"merged": self.merged, "expert": self.expert, "base": self.base}[name]

    def sums(self, name: str) -> "np.ndarray":
        """Each item's sum of values of model ``name`` (a task score is Σ sums / Σ sizes)."""
        import numpy as np

        values = np.asarray(self.role(name), dtype=float)
        if self.clusters is None:
            return values
        return np.add.reduceat(values, np.cumsum((0,) + self.clusters[:-1])) if values.size else values

    def sizes(self) -> "np.ndarray":
        import numpy as np

        return np.ones(len(self.merged)) if self.clusters is None else np.asarray(self.clusters, dtype=float)

    def check(self, where: str, n: int | None = None) -> None:
        """Lengths that agree with each other (and with the case's item count ``n``), or a UsageError saying which do not."""
        lengths = {r: len(v) for r in ROLES if (v := self.role(r)) is not None}
        expected = n if n is not None else lengths["merged"]
        wrong = {r: k for r, k in lengths.items() if k != expected}
        if wrong:
            said = ", ".join(f"{r} has {k}" for r, k in wrong.items())
            raise UsageError(f"{where}: per-item values do not match: {said}, where the case scored {expected} "
                             "values: the file was edited or truncated; re-run the case, or delete its 'items' "
                             "to report it without intervals")
        if expected == 0:
            raise UsageError(f"{where}: per-item values are empty: the file was edited or truncated; re-run the case, "
                             "or delete its 'items' to report it without intervals")
        if self.clusters is not None and (sum(self.clusters) != expected or min(self.clusters, default=1) < 1):
            raise UsageError(f"{where}: per-item values: the items' sizes add up to {sum(self.clusters)}, "
                             f"not the {expected} values scored: the file was edited or truncated")

    def to_dict(self, pool: "Pool | None" = None) -> dict[str, Any]:
        """Encoded arrays, inline or (with ``pool``) as references into the file's pool."""
        from mergebench.results.compact import encode

        def put(blob):
            return blob if pool is None else pool.put(blob)

        data: dict[str, Any] = {"fingerprint": self.fingerprint}
        for name in ROLES:
            values = self.role(name)
            data[name] = None if values is None else put(encode(values))
        data["clusters"] = None if self.clusters is None else put(encode(self.clusters, integers=True))
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str, pool: "Pool | None" = None) -> "ItemValues":
        from mergebench.results.compact import Pool, decode

        pool = pool or Pool()
        if not isinstance(data, Mapping) or not isinstance(data.get("fingerprint"), str) or data.get("merged") is None:
            raise UsageError(f"{where}: malformed per-item values (need 'fingerprint' and 'merged')")
        arrays = {name: None if data.get(name) is None else decode(pool.get(data[name], where), f"{where} ({name})")
                  for name in (*ROLES, "clusters")}
        clusters = None if arrays["clusters"] is None else tuple(int(v) for v in arrays["clusters"])
        return cls(data["fingerprint"], arrays["merged"], arrays["expert"], arrays["base"], clusters)


def _item_id(sample: Mapping[str, Any]) -> str | None:
    for name in ID_FIELDS:
        if name in sample and sample[name] is not None:
            return json.dumps(sample[name], sort_keys=True, default=str)
    return None


def item_list(samples: Sequence[Mapping[str, Any]], n: int, metric: str) -> tuple[list[str], tuple[int, ...] | None]:
    """The ids of the items behind ``n`` values and how many values each holds (None: one each).

    Falls back to positions (``#0``, ``#1``, ...) when the samples do not line up with the values
    or name no id: the item list is then identified by the task and its length only.
    """
    ids, sizes = [], []
    for sample in samples:
        if metric in sample and sample[metric] is None:  # kept for the reader, scored nothing (an unrated judged turn)
            continue
        item = _item_id(sample)
        if item is None:
            break
        size = len(sample[metric]) if isinstance(sample.get(metric), list) else 1
        if ids and ids[-1] == item:
            sizes[-1] += size
        else:
            ids.append(item)
            sizes.append(size)
    else:
        if ids and sum(sizes) == n:
            return ids, (None if all(s == 1 for s in sizes) else tuple(sizes))
    return [f"#{i}" for i in range(n)], None


def fingerprint(task: Any, ids: Sequence[str], clusters: Sequence[int] | None, n: int) -> str:
    """A short hash of the task's identity (name, version, options, metric) and its item list."""
    identity = {"task": task.name, "version": task.version, "metric": task.metric,
                "options": [[str(k), str(v)] for k, v in task.options], "items": list(ids),
                "clusters": None if clusters is None else list(clusters), "n": n}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def item_values(task: Any, merged: Any, expert: Any = None, base: Any = None) -> ItemValues | None:
    """The case's :class:`ItemValues` from the task results of its three models (``TaskResult``), or None.

    None when a result reports no per-item values (an lm-eval corpus-level metric) or the three were scored on
    different items (their sample ids differ): such a case is reported without an interval.
    """
    results = {"merged": merged, "expert": expert, "base": base}
    present = {r: res for r, res in results.items() if res is not None}
    if any(not res.values or len(res.values) != len(merged.values) for res in present.values()):
        return None
    from mergebench.results.compact import as_float32

    n = len(merged.values)
    lists = {r: item_list(res.samples, n, task.metric) for r, res in present.items()}
    ids, clusters = lists["merged"]
    if any(other != (ids, clusters) for other in lists.values()):
        return None
    return ItemValues(fingerprint(task, ids, clusters, n),
                      *(None if results[r] is None else as_float32(results[r].values) for r in ROLES),
                      clusters=clusters)


def read_samples(path: Path) -> list[dict[str, Any]]:
    """An evaluation's ``samples.jsonl`` (empty when it has none)."""
    if not path.is_file():
        return []
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
