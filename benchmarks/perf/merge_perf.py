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
from ``wait4``, each writing into a folder removed before it starts. Not a test: timings depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from isa_emulation import EMULATION, check_emulation, cpu_model  # noqa: E402

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


LAUNCHER = """import os, subprocess, sys, time
started = time.perf_counter()
process = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(process.pid, 0)
print(time.perf_counter() - started, os.waitstatus_to_exitcode(status), usage.ru_maxrss)
"""


def timed(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in GB) of a child process.

    The child is started by a small launcher process: Linux carries the RSS of the process that forks into the
    child's ``ru_maxrss`` (its high-water mark survives ``exec``), and this script holds torch and tensors by now."""
    process = subprocess.run([sys.executable, "-c", LAUNCHER, *command], env=env, capture_output=True, text=True)
    try:
        seconds, code, max_rss = process.stdout.split()
    except ValueError:
        raise SystemExit(f"the launcher of {' '.join(command[:4])} ... failed:\n{process.stderr[-3000:]}") from None
    if int(code) != 0:
        raise SystemExit(f"{' '.join(command[:4])} ... failed:\n{process.stderr[-3000:]}")
    return float(seconds), int(max_rss) / 1024**2  # ru_maxrss is in KiB on Linux


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


def check_exact(method: str, base_dir: Path, expert_dirs: list[Path], ours: Path) -> str:
    """Recompute our merge from its formula (float32 arithmetic on the bf16 inputs, rounded to bf16 once) and
    compare bit for bit: speed must not have cost exactness. TIES' threshold comes from ``torch.topk`` here,
    independently of the radix select the engine uses."""
    import torch

    from mergebench.checkpoint import CheckpointReader

    base_r, merged = CheckpointReader(base_dir), CheckpointReader(ours)
    readers = [CheckpointReader(d) for d in expert_dirs]
    differing = []
    for name in base_r.names():
        base = base_r.get(name).float()
        taus = [r.get(name).float() - base for r in readers]
        if method == "task_arithmetic":
            total = taus[0].clone()
            for tau in taus[1:]:
                total += tau
        else:
            deltas = []
            for tau in taus:
                k = max(1, int(0.2 * tau.numel()))
                threshold = tau.abs().reshape(-1).topk(k).values.min()
                deltas.append(torch.where(tau.abs() >= threshold, tau, 0.0))
            elected = torch.where(sum(deltas, torch.zeros_like(base)) >= 0, 1.0, -1.0)
            kept, count = torch.zeros_like(base), torch.zeros_like(base)
            for delta in deltas:
                agrees = torch.sign(delta) == elected
                kept += delta * agrees
                count += agrees
            total = kept / count.clamp(min=1)
        expected = (base + total).to(torch.bfloat16)
        if not torch.equal(expected.view(torch.int16), merged.get(name).view(torch.int16)):
            differing.append(name)
    if differing:
        return f"DIFFERS in {len(differing)} of {len(base_r.names())} tensors (first: {differing[0]})"
    return f"identical bit for bit in all {len(base_r.names())} tensors"


def spread(values: list[float]) -> str:
    """Median and the range over rounds: the figure and its uncertainty on a shared machine."""
    return f"{statistics.median(values):.3f} (range {min(values):.3f}–{max(values):.3f}, {len(values)} rounds)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mergekit", default=None,
                        help="mergekit-yaml of a mergekit 0.1.5 venv (default: $MERGEBENCH_MERGEKIT, else the venv "
                             "mergebench.merging.mergekit_venv builds once under ~/.cache/mergebench-tools)")
    parser.add_argument("--work", default="/tmp/mergebench-perf", help="where inputs and outputs are written")
    parser.add_argument("--methods", default="task_arithmetic,ties")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (ours and mergekit alternate first)")
    parser.add_argument("--native", action="store_true",
                        help="run both tools on every ISA this CPU has (default: the AVX2 emulation, for both)")
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
    for key in EMULATION:
        env.pop(key, None)
    if not args.native:
        env.update(EMULATION)
    isa = check_emulation(env)
    mergekit_python = Path(args.mergekit).parent / "python"
    if not args.native:  # mergekit's own torch must dispatch to AVX2 as well
        out = subprocess.run([str(mergekit_python), "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
                             env=env, capture_output=True, text=True, check=True).stdout.strip()
        if out.lower() != "avx2":
            raise SystemExit(f"the emulation did not take effect in mergekit's venv: its torch dispatches to {out}")
    print(f"CPU: {cpu_model()}; {isa}, torch's ISA the same in both tools"
          f"{'' if args.native else ' (AVX2 emulation: ' + ' '.join(f'{k}={v}' for k, v in EMULATION.items()) + ')'}; "
          f"load average at start {os.getloadavg()[0]:.2f}", flush=True)
    ours_cli = [sys.executable, "-m", "mergebench.cli", "merge"]
    commands = {}
    for method in args.methods.split(","):
        params, mk_method, per_model, shared = METHODS[method]
        ours_out, theirs_out = work / f"ours-{method}", work / f"mergekit-{method}"
        config = work / f"{method}.yml"
        config.write_text("\n".join([
            f"merge_method: {mk_method}", f"base_model: {base_dir}", "dtype: bfloat16", "models:",
            *[f"  - model: {path}\n    parameters: {per_model}" for path in experts.values()],
            f"parameters: {shared}", "",
        ]))
        commands[method] = {
            "ours": [*ours_cli, "--method", method, "--base", str(base_dir), "--no-exclude", "--force",
                     "--out", str(ours_out), *[f"--expert={label}={path}" for label, path in experts.items()],
                     *[f"--param={p}" for p in params]],
            "mergekit": [args.mergekit, str(config), str(theirs_out), "--quiet"],
        }
    runs: dict[str, dict[str, list[tuple[float, float]]]] = {m: {"ours": [], "mergekit": []} for m in commands}
    for round_ in range(args.rounds):
        for method, pair in commands.items():
            order = ["ours", "mergekit"] if round_ % 2 == 0 else ["mergekit", "ours"]
            for tool in order:  # each writes into a folder that does not exist yet (ours would delete it: --force)
                shutil.rmtree(work / f"{tool}-{method}", ignore_errors=True)
                runs[method][tool].append(timed(pair[tool], env))
            (o_s, o_gb), (m_s, m_gb) = runs[method]["ours"][-1], runs[method]["mergekit"][-1]
            print(f"  round {round_ + 1} {method:<16} ours {o_s:7.2f} s {o_gb:5.2f} GB | mergekit {m_s:7.2f} s "
                  f"{m_gb:5.2f} GB | time ratio {o_s / m_s:.3f}, RSS ratio {o_gb / m_gb:.3f} | "
                  f"load {os.getloadavg()[0]:.2f}", flush=True)

    print(f"\n{EXPERTS} experts of SmolLM2-135M (bf16), {os.cpu_count()} CPU cores; reading all inputs once: "
          f"{read_seconds:.2f} s; load average at end {os.getloadavg()[0]:.2f}")
    for method in commands:
        ours, theirs = runs[method]["ours"], runs[method]["mergekit"]
        exact = check_exact(method, base_dir, list(experts.values()), work / f"ours-{method}")
        largest, differing = max_difference(work / f"ours-{method}", work / f"mergekit-{method}")
        print(f"{method}: ours {spread([s for s, _ in ours])} s, mergekit {spread([s for s, _ in theirs])} s")
        print(f"  time ratio ours/mergekit per round: {spread([o[0] / t[0] for o, t in zip(ours, theirs)])}")
        print(f"  peak RSS ours {spread([g for _, g in ours])} GB, mergekit {spread([g for _, g in theirs])} GB; "
              f"ratio {spread([o[1] / t[1] for o, t in zip(ours, theirs)])}")
        print(f"  ours against our formula recomputed here: {exact}; against mergekit: max |difference| "
              f"{largest:.2e}, {100 * differing:.2f}% of entries differ")
    return 0


if __name__ == "__main__":
    sys.exit(main())
