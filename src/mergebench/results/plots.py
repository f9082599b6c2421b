"""PNG figures of a run, like the study's Figures 3 and 5, written next to the JSON results.

* performance vs wall-clock time (Figure 5): normalized multi-task score against merge plus
  validation time, one point per (model, method) — upper left is better;
* generalization vs multi-task performance (Figure 3): forgetting score (general tasks, % of
  base) against normalized multi-task score — upper right is better.

Scores carry their 95% bootstrap intervals (:mod:`mergebench.results.uncertainty`) as error bars
when the results hold per-item values.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from mergebench.results import CaseResult, group_by_model_method, overall_normalized

if TYPE_CHECKING:
    from mergebench.results.uncertainty import Bootstrap


def _points(results: Sequence[CaseResult]):
    for (model, method), group in group_by_model_method(results).items():
        yield model, method, group


def runtime_seconds(group: Sequence[CaseResult]) -> tuple[float, float]:
    """(algorithm seconds, validation seconds) of one (model, method): the same for each of its cases."""
    return max(r.merge_seconds for r in group), max(r.validation_seconds for r in group)


def _errors(value: float, found) -> tuple[float, float]:
    """Matplotlib's (below, above) error-bar lengths in percent; (0, 0) without an interval."""
    return (0.0, 0.0) if found is None else (100 * (value - found.lo), 100 * (found.hi - value))


def _scatter(points, *, xlabel: str, ylabel: str, title: str, path: Path, log_x: bool = False) -> Path:
    """One labelled scatter plot of ``(label, x, y, x_errors, y_errors)`` points, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, x, y, xerr, yerr in points:
        ax.errorbar(x, y, xerr=None if xerr == (0.0, 0.0) else [[xerr[0]], [xerr[1]]],
                    yerr=None if yerr == (0.0, 0.0) else [[yerr[0]], [yerr[1]]], fmt="o", capsize=3, elinewidth=1)
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if log_x:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # labelled minor ticks collide
    ax.margins(x=0.2, y=0.15)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_plots(results: Sequence[CaseResult], stem: Path, boot: "Bootstrap | None" = None) -> list[Path]:
    """Write the figures that the results support, with 95% intervals as error bars; return their paths."""
    if boot is None and any(r.items is not None for r in results):
        from mergebench.results.uncertainty import Bootstrap

        boot = Bootstrap(results)
    several_models = len({r.model for r in results}) > 1
    label = (lambda model, method: f"{method} ({model})") if several_models else (lambda model, method: method)

    def interval(model: str, method: str, kind: str):
        return None if boot is None else boot.interval(model, method, (kind, "overall"))

    written = []
    timed = []
    for m, meth, g in _points(results):
        y = overall_normalized(g)
        if y is not None:
            timed.append((label(m, meth), max(sum(runtime_seconds(g)), 0.01), 100 * y, (0.0, 0.0),
                          _errors(y, interval(m, meth, "normalized"))))
    if timed:
        written.append(_scatter(
            timed, xlabel="merge + validation time (s, log scale)",
            ylabel="normalized multi-task performance (%)",
            title="Performance vs wall-clock time (upper left is better)"
                  + ("\nbars: 95% bootstrap intervals over items" if boot else ""), log_x=True,
            path=stem.with_name(stem.name + "-performance-vs-time.png")))
    paired = []
    for m, meth, g in _points(results):
        x, y = overall_normalized(g), overall_normalized(g, forgetting=True)
        if x is not None and y is not None:
            paired.append((label(m, meth), 100 * x, 100 * y, _errors(x, interval(m, meth, "normalized")),
                           _errors(y, interval(m, meth, "forgetting"))))
    if paired:
        written.append(_scatter(
            paired, xlabel="normalized multi-task performance (%)", ylabel="generalization: general tasks, % of base",
            title="Generalization vs multi-task performance (upper right is better)"
                  + ("\nbars: 95% bootstrap intervals over items" if boot else ""),
            path=stem.with_name(stem.name + "-generalization-vs-multitask.png")))
    return written
