"""The README's main command from a fresh clone into an empty cache, timed and split by stage.

    python benchmarks/perf/cold_run.py [--native] [--ref HEAD] [--workdir DIR] [--keep] [--no-warm]
    python benchmarks/perf/cold_run.py --split-of CACHE   # only read a cache a run has filled


What a new user runs, step by step, each timed from the outside:

1. ``git clone`` of this repository at ``--ref`` (committed work only) into a fresh folder;
2. the install part of the clone's README main command (its Quick start's first command, split at
   ``&&``: the venv and ``pip install``; pip's own download cache is whatever this machine's is, as
   it would be for the user);
3. its ``pytest benchmarks ...`` part with ``MERGEBENCH_CACHE`` pointing at an empty folder (the cold run);
4. the same again (the warm run: everything reused).

The environment is this one's without ``PYTHONDONTWRITEBYTECODE`` (some images set it; a user's
shell does not, and with it every process compiles its imports again: ~25 s instead of ~11 s for
the harness's on the AMD EPYC).

Every step runs under the AVX2 emulation (``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2
MKL_ENABLE_INSTRUCTIONS=AVX2``, numpy's ``NPY_DISABLE_CPU_FEATURES`` and ``OPENBLAS_CORETYPE=Haswell``:
``isa_emulation.EMULATION``, set before Python starts and checked in the clone's venv after the
install) unless ``--native``: the target is a 2-core CPU without AVX-512 or AMX. The cold run is then split by stage from the ``build_seconds``
every artifact records in its ``meta.json`` (data, base, experts, statistics, merges,
evaluations); what is left of the pytest wall time (imports, collection, the data partitions,
cache look-ups, the report) is "harness". When stages ran side by side (``--mb-executor
processes``) their minutes are worker-minutes, summing to more than the wall time, and no harness
row is printed. The load average is sampled every 10 s throughout and
printed next to the figures, with the CPU model from ``lscpu``: on a machine other jobs share the
wall times are not the machine's, so quote them with it. The script also checks the two things the
figures must not cost: each expert beats the base on its own domain (the domain's mean score, as
the report's sanity table reads it), and the warm run builds nothing.

``--split-of CACHE`` runs nothing: it prints the stages' build minutes and the experts-vs-base
lines of a cache that a run has already filled (read only; a cache several runs have shared mixes
their artifacts, so compare it with care).

The full pytest output goes to ``<workdir>/cold.log`` and ``warm.log``; the temporary clone, venv
and cache (~16 GB) are removed at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from isa_emulation import EMULATION, check_emulation, cpu_model  # noqa: E402

TARGET_COLD_MINUTES = 30
TARGET_WARM_SECONDS = 60
STAGES = (("source", "data (wheels downloaded, extracted)"), ("base", "base model built"), ("expert", "experts trained"),
          ("statistics", "statistics (Fisher, RegMean, L&S)"), ("merged", "merges"), ("eval", "evaluations"))


class LoadSampler:
    """The 1-minute load average every ``every`` seconds, in a daemon thread, until stopped."""

    def __init__(self, every: float = 10.0) -> None:
        self.samples: list[float] = [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)
        self._thread.start()

    def _run(self, every: float) -> None:
        while not self._stop.wait(every):
            self.samples.append(os.getloadavg()[0])

    def stop(self) -> str:
        self._stop.set()
        self._thread.join()
        return f"load average {min(self.samples):.1f}-{max(self.samples):.1f}, mean {statistics.mean(self.samples):.1f}"


def run(command: list[str], cwd: Path, env: dict, log: Path) -> float:
    """Run ``command`` with its output appended to ``log``; seconds of wall time. Exits on failure."""
    started = time.perf_counter()
    with open(log, "a", encoding="utf-8") as handle:
        handle.write(f"$ {' '.join(command)}\n")
        handle.flush()
        done = subprocess.run(command, cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - started
    if done.returncode:
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-30:]
        sys.exit(f"`{' '.join(command)}` failed (exit {done.returncode}) after {seconds:.0f} s; last lines of {log}:\n"
                 + "\n".join(tail))
    return seconds


def stage_seconds(cache: Path) -> tuple[dict[str, float], dict[str, int]]:
    """Build seconds summed per stage over every artifact in ``cache``, and how many artifacts each stage has."""
    seconds: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for meta_path in cache.glob("*/*/meta.json"):
        meta = json.loads(meta_path.read_text())
        seconds[meta["stage"]] += float(meta.get("build_seconds", 0.0))
        counts[meta["stage"]] += 1
    return seconds, counts


def experts_vs_base(cache: Path, python: Path, repo: Path, env: dict) -> list[str]:
    """Lines saying, per domain, the base's and the expert's mean score on the domain's tasks, and whether it gained."""
    script = r'''
import json, sys
from pathlib import Path
from statistics import mean
from mergebench import plugin_manager
cache = Path(sys.argv[1])
tasks = plugin_manager.registries().tasks
metas = [json.loads(p.read_text()) for p in cache.glob("*/*/meta.json")]
base = next(m["digest"] for m in metas if m["stage"] == "base")
experts = {m["inputs"]["domain"]: m["digest"] for m in metas if m["stage"] == "expert"}
scores = {}
for m in metas:
    if m["stage"] == "eval":
        result = json.loads((cache / "eval" / m["digest"] / "result.json").read_text())
        scores[m["inputs"]["model"], m["inputs"]["task"]] = result["score"]
for domain, expert in sorted(experts.items()):
    specs = [t for t in tasks.specs() if t.domain == domain and (expert, t.name) in scores and (base, t.name) in scores]
    if not specs:
        print(f"{domain}: no evaluation of the expert"); continue
    up = {t.higher_is_better for t in specs}
    b, e = mean(scores[base, t.name] for t in specs), mean(scores[expert, t.name] for t in specs)
    better = (e > b) if up == {True} else (e < b) if up == {False} else None
    names = ", ".join(f"{t.name} {scores[base, t.name]:.3f} -> {scores[expert, t.name]:.3f}" for t in specs)
    verdict = "mixed directions" if better is None else ("beats the base" if better else "DOES NOT beat the base")
    print(f"{domain}: mean {b:.3f} -> {e:.3f} ({'higher' if up == {True} else 'lower'} is better): {verdict} [{names}]")
'''
    done = subprocess.run([str(python), "-c", script, str(cache)], cwd=repo, env=env, capture_output=True, text=True)
    if done.returncode:
        return [f"(could not compare the experts with the base: {done.stderr.strip().splitlines()[-1:]})"]
    return done.stdout.strip().splitlines()


def main_command(repo: Path) -> list[list[str]]:
    """The clone's README main command (the Quick start's first), as the argument lists of its ``&&`` steps."""
    import re
    import shlex

    readme = (repo / "README.md").read_text()
    block = re.search(r"## Quick start.*?```bash\n(.*?)```", readme, re.S)
    commands = [line for line in (block.group(1) if block else "").splitlines() if line and not line.startswith("#")]
    if not commands:
        sys.exit(f"no Quick start command block in {repo / 'README.md'}")
    return [shlex.split(step) for step in commands[0].split("&&")]


def print_split(seconds: dict[str, float], counts: dict[str, int], total: float) -> None:
    """One row per stage: build minutes, share of ``total`` and artifact count."""
    for stage, label in STAGES:
        print(f"| {label} | {seconds.get(stage, 0.0) / 60:.1f} | {seconds.get(stage, 0.0) / total:.0%} | {counts.get(stage, 0)} |")


def split_of(cache: Path) -> None:
    """The split and the experts-vs-base check of an already filled cache; builds and runs nothing."""
    if not any(cache.glob("*/*/meta.json")):
        sys.exit(f"{cache} holds no artifacts (no <stage>/<digest>/meta.json); give the MERGEBENCH_CACHE a run filled")
    seconds, counts = stage_seconds(cache)
    staged = sum(seconds.values())
    print(f"Build time by stage in {cache} ({cpu_model()}; as recorded when built, the load then unknown):\n")
    print("| step | minutes | share | artifacts |\n|---|---|---|---|")
    print_split(seconds, counts, staged)
    print(f"| **stages together** | **{staged / 60:.1f}** | | |")
    print("\nEach expert against the base on its own domain (mean of the domain's task scores):")
    repo = Path(__file__).resolve().parents[2]
    for line in experts_vs_base(cache, Path(sys.executable), repo, dict(os.environ)):
        print(f"  {line}")


def set_priority(nice: int) -> str:
    """Run this process and its children at ``nice``, and its autogroup too; say what took effect.

    With the kernel's scheduler autogroups (most desktop and server distributions), a process's
    nice value only ranks it against processes of its own session: against another session's
    jobs its whole autogroup counts, at the autogroup's own nice value
    (``/proc/self/autogroup``). Both are set, so the figure approximates a machine the run has to
    itself even while other jobs share it (their CPU time then falls to what is left)."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    except OSError as error:
        sys.exit(f"--priority {nice}: cannot set this process's nice value ({error.strerror}); "
                 "values below 0 need root")
    group = Path("/proc/self/autogroup")
    try:
        before = group.read_text().split()[-1]
        group.write_text(str(nice))
    except OSError:
        return f"nice {nice} (no scheduler autogroup here)"
    # the autogroup is the whole terminal session's: give it back its value when the run ends
    atexit.register(lambda: group.write_text(before))
    return f"nice {nice}, autogroup {group.read_text().split()[-1]} (back to {before} at exit)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--native", action="store_true", help="no AVX2 emulation (this CPU's own instruction set)")
    parser.add_argument("--ref", default="HEAD", help="the commit to clone (default HEAD: committed work only)")
    parser.add_argument("--repo", default=str(Path(__file__).resolve().parents[2]), help="the repository to clone")
    parser.add_argument("--workdir", default=None, help="where to clone, install and cache (default: a new temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the clone, venv and cache afterwards")
    parser.add_argument("--no-warm", action="store_true", help="skip the warm re-run")
    parser.add_argument("--priority", type=int, default=None, metavar="NICE",
                        help="run at this nice value, for this process's scheduler autogroup too (e.g. -15 on a "
                             "machine other jobs share; below 0 needs root)")
    parser.add_argument("--pytest-arg", action="append", default=[], metavar="ARG",
                        help="an argument added to both pytest runs after the README's own (repeatable)")
    parser.add_argument("--split-of", metavar="CACHE", default=None,
                        help="run nothing: print the split and the experts-vs-base check of a cache a run filled")
    args = parser.parse_args()
    if args.split_of:
        split_of(Path(args.split_of).expanduser())
        return

    priority = set_priority(args.priority) if args.priority is not None else "normal priority"
    work = Path(args.workdir or tempfile.mkdtemp(prefix="mergebench-cold-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    repo, cache, log, warm_log = work / "repo", work / "cache", work / "cold.log", work / "warm.log"
    if repo.exists() or cache.exists():
        sys.exit(f"{work} already holds a clone or a cache; give an empty --workdir")
    env = {k: v for k, v in os.environ.items() if k not in ("MERGEBENCH_CACHE", "VIRTUAL_ENV", "PYTHONPATH", "PYTEST_ADDOPTS",
                                                            "PYTHONDONTWRITEBYTECODE", *EMULATION)}
    env["MERGEBENCH_CACHE"] = str(cache)
    if not args.native:
        env.update(EMULATION)
    isa = "native instruction set" if args.native else "AVX2 emulation (" + " ".join(f"{k}={v}" for k, v in EMULATION.items()) + ")"
    print(f"CPU: {cpu_model()}; {isa}; {priority}\nwork folder {work}; load average at start {os.getloadavg()[0]:.1f}",
          flush=True)

    sampler = LoadSampler()
    clone = run(["git", "clone", "--quiet", "--no-checkout", args.repo, str(repo)], work, env, log)
    clone += run(["git", "checkout", "--quiet", args.ref], repo, env, log)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    print(f"cloned {args.repo} at {commit} in {clone:.0f} s", flush=True)
    steps = main_command(repo)
    installing, benchmark = steps[:-1], [*steps[-1], *args.pytest_arg]
    if benchmark[:2] != [".venv/bin/pytest", "benchmarks"]:
        sys.exit(f"the README's main command does not end in .venv/bin/pytest benchmarks: {steps}")
    install = sum(run(step, repo, env, log) for step in installing)
    print(f"installed in {install / 60:.1f} min ({' && '.join(' '.join(step) for step in installing)})", flush=True)
    if not args.native:  # each library reads its own variable; refuse figures from a partial emulation
        print(check_emulation(env, python=str(repo / ".venv" / "bin" / "python")), flush=True)
    cold = run(benchmark, repo, env, log)
    load = sampler.stop()
    print(f"cold pytest benchmarks: {cold / 60:.1f} min ({load})", flush=True)

    seconds, counts = stage_seconds(cache)
    staged = sum(seconds.values())
    total = clone + install + cold
    print(f"\nCold run split ({cpu_model()}; {isa}; {load}; commit {commit}):\n")
    print("| step | minutes | share | artifacts |\n|---|---|---|---|")
    overlapped = staged > cold * 1.02
    print(f"| install ({' && '.join(' '.join(step) for step in installing)}) | {install / 60:.1f} | {install / total:.0%} | |")
    if overlapped:
        print(f"| pytest ({' '.join(benchmark)}), wall time | {cold / 60:.1f} | {cold / total:.0%} | |")
        print("| *its stages in worker-minutes (side by side, so more than the wall time):* | | | |")
    print_split(seconds, counts, total)
    if not overlapped:
        other = cold - staged
        print(f"| harness (imports, collection, partitions, look-ups, report) | {other / 60:.1f} | {other / total:.0%} | |")
    print(f"| clone | {clone / 60:.1f} | {clone / total:.0%} | |")
    verdict = "within" if total <= TARGET_COLD_MINUTES * 60 else "OVER"
    print(f"| **total** | **{total / 60:.1f}** | | {verdict} the {TARGET_COLD_MINUTES}-minute target |")
    if overlapped:
        print(f"(stages sum to {staged / 60:.1f} worker-minutes in {cold / 60:.1f} min of pytest: they ran side by side)")

    print("\nEach expert against the base on its own domain (mean of the domain's task scores):")
    for line in experts_vs_base(cache, repo / ".venv" / "bin" / "python", repo, env):
        print(f"  {line}")

    if not args.no_warm:
        sampler = LoadSampler()
        warm = run(benchmark, repo, env, warm_log)
        load = sampler.stop()
        built = [line for line in warm_log.read_text().splitlines() if line.startswith("artifacts:")]
        verdict = "within" if warm <= TARGET_WARM_SECONDS else "OVER"
        print(f"\nwarm pytest benchmarks: {warm:.1f} s ({load}); {built[-1] if built else 'no artifact summary'}; "
              f"{verdict} the {TARGET_WARM_SECONDS}-second target")
    print(f"\nlogs: {log}" + ("" if args.no_warm else f", {warm_log}"))
    if not args.keep:
        for path in (repo, cache):
            shutil.rmtree(path, ignore_errors=True)
        print(f"removed the clone, venv and cache under {work} (--keep keeps them)")


if __name__ == "__main__":
    main()
