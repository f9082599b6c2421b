"""Did a value really drop between a baseline run and this one? A one-sided bootstrap test, and what it can see.

The two runs are resampled together (:class:`~mergebench.results.uncertainty.Bootstrap` with runs
``baseline`` and ``current``): where a task's items are the same in both (same fingerprint) each
resample draws the same items in both runs, so the test is *paired* and the item-to-item variation
the runs share cancels; where they differ (another item list, another task version) the runs are
drawn independently and the test is *unpaired*. The drop is ``baseline − current`` in the value's
bad direction (for bits per byte, up), and the test rejects "no drop" at level α when fewer than a
fraction α of the resampled drops are ≤ 0: the one-sided percentile bootstrap test, ``p = (1 + #{drop* ≤ 0})
/ (B + 1)``. Two identical runs give drop* = 0 on every resample, p = 1, and never fail.

The smallest drop the gate can see (with 80% power at level α) is

    detectable = (z₁₋α + z₀.₈) · √(se_baseline² + se_current²)

with each se the bootstrap standard error of the value within its run: the standard error of the
difference of two runs of this value with these item counts and item variances, were their item
scores unrelated. It does not shrink to 0 when the two runs happen to be identical. Pairing
helps when the runs' item scores are correlated (they usually are), so a paired gate may also
catch somewhat smaller drops; this is the drop it catches four times in five regardless.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from mergebench.results.uncertainty import LEVEL, Bootstrap, Key, quantiles, tasks_behind

POWER = 0.8
TESTS = ("bootstrap", "point")
"""``bootstrap``: fail when the drop passes the threshold and the test says it is real (default);
``point``: the old rule, fail when the point estimate drops past the threshold."""
BASELINE, CURRENT = "baseline", "current"


def detectable_drop(se_baseline: float, se_current: float, alpha: float, power: float = POWER) -> float:
    z = NormalDist().inv_cdf
    return (z(1 - alpha) + z(power)) * math.hypot(se_baseline, se_current)


@dataclass(frozen=True)
class DropTest:
    """A value's drop from the baseline (positive = worse), its interval, the test's p-value and the detectable drop."""

    drop: float
    lo: float | None = None
    hi: float | None = None
    p: float | None = None
    detectable: float | None = None
    items: int = 0
    pairing: str = ""  # "paired", "unpaired", "partly paired (...)" or "unpaired, on other tasks (...)"
    untested: str = ""  # why no test was possible; the gate then falls back to the point estimate

    @property
    def tested(self) -> bool:
        return self.p is not None


def _untestable(boot: Bootstrap, model: str, method: str, key: Key) -> str:
    for run, who in ((BASELINE, "the baseline"), (CURRENT, "this run")):
        for r in tasks_behind(boot.groups[run].get((model, method), []), key):
            if r.items is None:
                why = ("saved before mergebench kept per-item values; save a new baseline with --mb-save"
                       if run == BASELINE else "its task reports no per-item values")
                return f"{who} has no per-item values for {r.task} ({why})"
            if r.items.items < 2:
                return f"{r.task} has {r.items.items} item in {who}: no variation to test against"
    return ""


def _pairing(boot: Bootstrap, model: str, method: str, key: Key) -> str:
    before = boot.fingerprints(BASELINE, model, method, key)
    after = boot.fingerprints(CURRENT, model, method, key)
    if set(before) != set(after):
        return (f"unpaired, on other tasks (the baseline: {', '.join(sorted(before))}; "
                f"this run: {', '.join(sorted(after))})")
    differ = sorted(t for t in after if before.get(t) != after[t])
    if not differ:
        return "paired"
    if len(differ) == len(after):
        return "unpaired"
    return f"partly paired ({', '.join(differ)} unpaired)"


def drop_test(boot: Bootstrap, model: str, method: str, key: Key, higher_is_better: bool, alpha: float) -> DropTest:
    """Test the drop of one value of (model, method) from the ``baseline`` run to the ``current`` run of ``boot``."""
    old, new = boot.points(BASELINE, model, method)[key], boot.points(CURRENT, model, method)[key]
    sign = 1.0 if higher_is_better else -1.0
    drop = sign * (old - new) + 0.0  # + 0.0: no "-0.0" for identical runs
    items = boot.items(CURRENT, model, method, key)
    untested = _untestable(boot, model, method, key)
    before, after = boot.values(BASELINE, model, method).get(key), boot.values(CURRENT, model, method).get(key)
    if untested or before is None or after is None:
        return DropTest(drop, items=items, untested=untested or "no resample defines this value")
    both = np.isfinite(before) & np.isfinite(after)
    drops = sign * (before[both] - after[both]) + 0.0
    if drops.size < 2:
        return DropTest(drop, items=items, untested="a reference scored 0 on nearly every resample")
    lo, hi = quantiles(drops, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    p = (1 + int(np.count_nonzero(drops <= 0))) / (drops.size + 1)
    se_old, se_new = float(before[both].std(ddof=1)), float(after[both].std(ddof=1))
    detectable = detectable_drop(se_old, se_new, alpha) if se_old or se_new else None
    return DropTest(drop, float(lo), float(hi), p, detectable, items, _pairing(boot, model, method, key))
