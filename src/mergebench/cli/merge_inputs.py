"""The inputs of ``mergebench merge`` as the chosen method will read them, checked before any work.

A data-aware method reads each ``--samples`` file and loads base and experts with transformers
for minutes of statistics before the merge's own checks would run; here the files are read, the
checkpoints' headers checked and, for those methods, their compatibility too, so a bad input is
one line at once and nothing is computed or cached for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from mergebench.cli import inputs
from mergebench.cli.common import key_values
from mergebench.errors import UsageError


def read_samples(given: Sequence[str], spec, experts: Mapping[str, Path]) -> dict[str, list[dict[str, str]]]:
    """Each expert's ``--samples`` file, read and checked; empty for a method that uses none."""
    from mergebench.merging.statistics import read_jsonl

    files = key_values(given, "--samples")
    statistic = spec.load().statistic
    if not statistic:
        if files:
            raise UsageError(f"method {spec.name!r} uses no training samples; drop --samples")
        return {}
    unknown = sorted(set(files) - set(experts))
    if unknown:
        raise UsageError(f"--samples {unknown[0]}=... names no --expert; experts: {', '.join(experts)}")
    missing = [label for label in experts if label not in files]
    if missing:  # as the statistics would say, but before any checkpoint is read
        raise UsageError(f"no training samples for expert(s) {', '.join(missing)}: method {spec.name!r} computes {statistic} "
                         "statistics from samples of each expert's training data; pass --samples DOMAIN=FILE.jsonl (lines "
                         'of {"prompt": ..., "completion": ...}) for every --expert')
    samples = {}
    for label, file in files.items():
        try:
            samples[label] = read_jsonl(Path(file))
        except UnicodeDecodeError:
            raise UsageError(f"--samples {label}={file} is not UTF-8 text; give JSON lines of "
                             '{"prompt": ..., "completion": ...}') from None
    return samples


def check_checkpoints(base: Path, experts: Mapping[str, Path], *, data_aware: bool, allow_pickle: bool) -> None:
    """Base and experts readable and mergeable; a data-aware method's are also loaded by transformers
    for statistics, which read safetensors only, and cross-checked now rather than after them."""
    fix = inputs.STATISTICS_PICKLE_FIX if data_aware else inputs.ALLOW_PICKLE_FIX
    allowed = allow_pickle and not data_aware
    inputs.checkpoint_folder(base, "--base", allow_pickle=allowed, pickle_fix=fix)
    for label, path in experts.items():
        inputs.checkpoint_folder(path, f"--expert {label}=", allow_pickle=allowed, pickle_fix=fix)
    if data_aware:
        from mergebench.merging.engine import open_inputs

        reader, readers = open_inputs(base, experts)
        for opened in (reader, *readers.values()):
            opened.close()
