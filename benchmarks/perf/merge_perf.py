"""Merge speed and memory against mergekit, on 5 experts of the embedded 135M model.

    MERGEBENCH_CACHE=/path/to/cache python benchmarks/perf/merge_perf.py \\
        [--mergekit /path/to/mergekit-venv/bin/mergekit-yaml] [--work DIR] [--methods task_arithmetic,ties]

Inputs: the embedded SmolLM2-135M-Instruct base (built into the cache on first use) cast to
bf16, and 5 synthetic experts = base + Gaussian noise, saved in bf16. A merge's cost does not
depend on what the weights mean, only on their count and dtype, so synthetic experts measure
the same work as finetuned ones (mergebench's own synthetic recipe is sparse; here every entry
moves, so top-k has no ties to exploit).

For each method, one run prints: the time to read every input tensor once (warm page cache,
as for both tools), our wall time and peak RSS, mergekit's on the same files with the same
method and hyperparameters (TIES: density 0.2, per tensor, λ 1; Task Arithmetic: λ 1; nothing
excluded, since mergekit merges every tensor), the ratios, and how far the two outputs differ.
Both tools run as child processes, timed from start to exit (imports included) with peak RSS
from ``wait4``. Not a test: timings depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

EXPERTS = 5
NOISE = 0.01  # of each tensor's standard deviation
METHODS = {
    # name: (our --param list, mergekit method, per-model parameters, shared parameters)
    "task_arithmetic": (["scaling=1.0"], "task_arithmetic", "{weight: 1.0}", "{lambda: 1.0}"),
    "ties": (["scaling=1.0", "density=0.2", "scope=tensor"], "ties", "{weight: 1.0, density: 0.2}", "{lambda: 1.0}"),
}


def prepare_inputs(work: Path) -> tuple[Path, dict[str, Path]]:
    """bf16 base and experts under ``work`` (reused when present)."""
    import torch

    from mergebench import plugin_manager
    from mergebench.cache import ArtifactCache
    from mergebench.checkpoint import CheckpointReader, ShardedWriter, copy_tokenizer_files
    from mergebench.pipeline import Pipeline, RunContext

    base_dir = work / "base"
    experts = {f"e{i}": work / f"e{i}" for i in range(EXPERTS)}
    if all((d / "config.json").is_file() for d in [base_dir, *experts.values()]):
        return base_dir, experts
    registries = plugin_manager.registries()
    source = Pipeline(RunContext(cache=ArtifactCache()), registries).base(registries.models.get("smollm2-135m-instruct")).path
    reader = CheckpointReader(source)
    for index, directory in enumerate([base_dir, *experts.values()]):
        shutil.rmtree(directory, ignore_errors=True)
        writer = ShardedWriter(directory)
        generator = torch.Generator().manual_seed(index)
        for name in reader.names():
            tensor = reader.get(name).float()
            if index:
                tensor = tensor + torch.randn(tensor.shape, generator=generator) * tensor.std() * NOISE
            writer.add(name, tensor.to(torch.bfloat16))
        writer.close()
        config = json.loads((source / "config.json").read_text())
        config["dtype"] = "bfloat16"
        (directory / "config.json").write_text(json.dumps(config, indent=2))
        copy_tokenizer_files(source, directory)
    return base_dir, experts


def read_all_seconds(directories: list[Path]) -> float:
    """Seconds to read every tensor of every input once (after one warm-up pass)."""
    from mergebench.checkpoint import CheckpointReader

    def once() -> float:
        started = time.perf_counter()
        for directory in directories:
            reader = CheckpointReader(directory)
            for name in reader.names():
                reader.get(name)  # pread into memory we own: every byte is read
        return time.perf_counter() - started

    once()
    return min(once() for _ in range(2))


def timed(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in GB) of a child process."""
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command[:4])} ... failed:\n{stderr[-3000:]}")
    return seconds, usage.ru_maxrss / 1024**2  # ru_maxrss is in KiB on Linux


def max_difference(ours: Path, theirs: Path) -> tuple[float, float]:
    """(largest |ours − theirs| over all tensors, fraction of entries that differ)."""
    from mergebench.checkpoint import CheckpointReader

    a, b = CheckpointReader(ours), CheckpointReader(theirs)
    largest, differing, total = 0.0, 0, 0
    for name in a.names():
        x, y = a.get(name).float(), b.get(name).float()
        diff = (x - y).abs()
        largest = max(largest, float(diff.max()))
        differing += int((diff > 0).sum())
        total += diff.numel()
    return largest, differing / total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mergekit", default=None,
                        help="mergekit-yaml of a mergekit 0.1.5 venv (default: $MERGEBENCH_MERGEKIT, else the venv "
                             "mergebench.merging.mergekit_venv builds once under ~/.cache/mergebench-tools)")
    parser.add_argument("--work", default="/tmp/mergebench-perf", help="where inputs and outputs are written")
    parser.add_argument("--methods", default="task_arithmetic,ties")
    args = parser.parse_args(argv)
    if args.mergekit is None:
        from mergebench.merging.mergekit_venv import mergekit_yaml

        args.mergekit = str(mergekit_yaml())  # the tests' mergekit: found or built the same way
    if not Path(args.mergekit).is_file():
        raise SystemExit(f"--mergekit {args.mergekit} is not a file: give a mergekit 0.1.5 venv's bin/mergekit-yaml")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    base_dir, experts = prepare_inputs(work)
    inputs = [base_dir, *experts.values()]
    read_seconds = read_all_seconds(inputs)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    ours_cli = [sys.executable, "-m", "mergebench.cli", "merge"]
    rows = []
    for method in args.methods.split(","):
        params, mk_method, per_model, shared = METHODS[method]
        ours_out, theirs_out = work / f"ours-{method}", work / f"mergekit-{method}"
        command = [*ours_cli, "--method", method, "--base", str(base_dir), "--no-exclude", "--force",
                   "--out", str(ours_out), *[f"--expert={label}={path}" for label, path in experts.items()],
                   *[f"--param={p}" for p in params]]
        ours = timed(command, env)
        config = work / f"{method}.yml"
        config.write_text("\n".join([
            f"merge_method: {mk_method}", f"base_model: {base_dir}", "dtype: bfloat16", "models:",
            *[f"  - model: {path}\n    parameters: {per_model}" for path in experts.values()],
            f"parameters: {shared}", "",
        ]))
        shutil.rmtree(theirs_out, ignore_errors=True)
        theirs = timed([args.mergekit, str(config), str(theirs_out), "--quiet"], env)
        largest, differing = max_difference(ours_out, theirs_out)
        rows.append((method, ours, theirs, largest, differing))

    print(f"\n{EXPERTS} experts of SmolLM2-135M (bf16), {os.cpu_count()} CPU cores; reading all inputs once: "
          f"{read_seconds:.2f} s")
    print(f"{'method':<16} {'ours s':>8} {'ours GB':>8} {'mergekit s':>11} {'mergekit GB':>12} "
          f"{'time ratio':>11} {'RSS ratio':>10} {'ours/read':>10}  output difference")
    for method, (o_s, o_gb), (m_s, m_gb), largest, differing in rows:
        print(f"{method:<16} {o_s:8.2f} {o_gb:8.2f} {m_s:11.2f} {m_gb:12.2f} {o_s / m_s:11.3f} {o_gb / m_gb:10.3f} "
              f"{o_s / read_seconds:10.1f}  max {largest:.2e}, {100 * differing:.2f}% of entries")
    return 0


if __name__ == "__main__":
    sys.exit(main())
