"""Hyperparameters with one value per expert, written ``label=value,label=value``.

A method's hyperparameters are plain values (they go into cache keys and pytest cases), so a
per-expert setting is one string that names each expert by its label — the domain in a
benchmark case, the ``--expert LABEL=DIR`` label on the command line — rather than a list whose
meaning would depend on the order the experts come in. An empty string gives every expert the
default.
"""

from __future__ import annotations

from typing import Sequence

from mergebench.errors import UsageError


def per_expert(params: dict, key: str, labels: Sequence[str], default: float) -> list[float]:
    """The value of ``params[key]`` for each of ``labels``, in their order."""
    text = str(params.get(key) or "").strip()
    if not text:
        return [float(default)] * len(labels)
    values: dict[str, float] = {}
    for item in text.split(","):
        label, sep, value = item.strip().rpartition("=")
        if not sep or not label:
            raise UsageError(f"hyperparameter {key}={text!r}: {item.strip()!r} must look like LABEL=NUMBER "
                             f"(one per expert: {', '.join(labels)})")
        try:
            values[label] = float(value)
        except ValueError:
            raise UsageError(f"hyperparameter {key}: {value!r} for {label!r} is not a number") from None
    unknown = sorted(set(values) - set(labels))
    missing = [label for label in labels if label not in values]
    if unknown or missing:
        raise UsageError(
            f"hyperparameter {key}={text!r} must give one value per expert ({', '.join(labels)})"
            + (f"; no expert is called {', '.join(map(repr, unknown))}" if unknown else "")
            + (f"; missing {', '.join(map(repr, missing))}" if missing else "")
        )
    return [values[label] for label in labels]

