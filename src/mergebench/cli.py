"""``mergebench`` on the command line: the same code paths as the pytest cases.

    mergebench plugins
    mergebench merge --method ties --base DIR --expert math=DIR --expert coding=DIR --param density=0.2 --out DIR
    mergebench merge --method fisher --base DIR --expert math=DIR --samples math=MATH.jsonl ... --out DIR
    mergebench eval --model DIR --task gsm8k_mini
    mergebench finetune --base smollm2-135m-instruct --domain math
    mergebench report results.json
    mergebench cache verify [--stage S]
    mergebench cache gc [--older-than DAYS] [--stage S] [--yes]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import Sequence

from mergebench.errors import MergebenchError, UsageError


def _key_values(items: Sequence[str], flag: str) -> dict[str, str]:
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise UsageError(f"{flag} {item!r} must look like KEY=VALUE")
        if key in pairs:
            raise UsageError(f"{flag} {key} is given twice")
        pairs[key] = value
    return pairs


def _console():
    from rich.console import Console

    return Console()


def _context(args: argparse.Namespace):
    from mergebench.cache import ArtifactCache
    from mergebench.devices import resolve_device
    from mergebench.pipeline import RunContext

    return RunContext(
        cache=ArtifactCache(getattr(args, "cache_dir", None)),
        device=resolve_device(getattr(args, "device", "auto")),
        seed=getattr(args, "seed", 0),
        eval_limit=getattr(args, "limit", None),
        batch_size=getattr(args, "batch_size", 16),
        model_roots=tuple(Path(p) for p in getattr(args, "model_root", []) or []),
        backend=getattr(args, "backend", "hf"),
    )


# -- plugins -------------------------------------------------------------------------------
def cmd_plugins(args: argparse.Namespace) -> int:
    from rich.table import Table

    from mergebench import plugin_manager

    registries = plugin_manager.registries()
    console = _console()
    plugin_table = Table(title="Installed plugins", title_justify="left")
    for column in ("entry point", "distribution", "version"):
        plugin_table.add_column(column, no_wrap=True)
    for provider in registries.plugins:
        plugin_table.add_row(provider.plugin, provider.distribution, provider.version)
    console.print(plugin_table)

    methods = Table(title="Merge methods", title_justify="left")
    methods.add_column("name", no_wrap=True)
    for column in ("family", "hyperparameters (default; grid)", "data", "provided by"):
        methods.add_column(column)
    for entry in registries.methods.entries():
        spec = entry.spec
        params = "; ".join(
            f"{hp.name}={hp.default!r}" + (f" grid {len(hp.grid)}" if hp.grid else "") for hp in spec.hyperparams
        ) or "—"
        methods.add_row(spec.name, spec.family, params, _data_needs(spec), str(entry.provider))
    console.print(methods)

    tasks = Table(title="Tasks", title_justify="left")
    tasks.add_column("name", no_wrap=True)
    for column in ("domain", "metric", "suites", "stands in for", "provided by"):
        tasks.add_column(column)
    for entry in registries.tasks.entries():
        spec = entry.spec
        tasks.add_row(spec.name, spec.domain, spec.metric + (" ↑" if spec.higher_is_better else " ↓"),
                      ",".join(sorted(spec.suites)), spec.stand_in_for or "", str(entry.provider))
    console.print(tasks)

    models = Table(title="Models", title_justify="left")
    models.add_column("name", no_wrap=True)
    for column in ("family", "size", "instruct", "source", "experts", "suites", "provided by"):
        models.add_column(column)
    for entry in registries.models.entries():
        spec = entry.spec
        experts = ", ".join(f"{e.domain}:{e.hub_id or e.recipe}" for e in spec.experts) if args.verbose else \
            ", ".join(spec.domains)
        models.add_row(spec.name, spec.family, spec.size, "yes" if spec.instruct else "no",
                       spec.hub_id or spec.source, experts, ",".join(sorted(spec.suites)),
                       str(entry.provider))
    console.print(models)

    recipes = Table(title="Finetuning recipes", title_justify="left")
    recipes.add_column("name", no_wrap=True)
    for column in ("domain", "summary", "provided by"):
        recipes.add_column(column)
    for entry in registries.recipes.entries():
        recipes.add_row(entry.spec.name, entry.spec.domain, entry.spec.summary, str(entry.provider))
    console.print(recipes)
    return 0


def _data_needs(spec) -> str:
    """A method's data needs, derived from its class: a plugin whose class cannot be imported still gets listed."""
    try:
        return ", ".join(d.value for d in spec.data)
    except ImportError as exc:
        return f"? (cannot import {spec.impl}: {exc})"


# -- merge ---------------------------------------------------------------------------------
def cmd_merge(args: argparse.Namespace) -> int:
    from mergebench import plugin_manager, progress
    from mergebench.cache.leftovers import out_tmp_path
    from mergebench.devices import resolve_device
    from mergebench.merging.api import DEFAULT_EXCLUDE, MergeContext
    from mergebench.merging.engine import merge_checkpoints

    spec = plugin_manager.registries().methods.get(args.method)
    experts = {label: Path(path) for label, path in _key_values(args.expert, "--expert").items()}
    if not experts:
        raise UsageError("give at least one --expert DOMAIN=DIR")
    params = spec.resolve_params(_key_values(args.param, "--param"))
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.force:
        raise UsageError(f"{out} exists and is not empty; choose another --out or pass --force to replace it")
    exclude = () if args.no_exclude else tuple(args.exclude or DEFAULT_EXCLUDE)
    _verify_cached_inputs([Path(args.base), *experts.values()])
    device = resolve_device(args.device)
    statistics = _merge_statistics(args, spec, params, experts, exclude, device)
    context = MergeContext(seed=args.seed, device=device, exclude=exclude, domains=tuple(experts),
                           statistics=statistics, threads=args.threads)
    tmp = out_tmp_path(out)  # named by host and pid; dead merges' leftovers next to it are swept
    try:
        with progress.use_sink(progress.default_sink()):
            report = merge_checkpoints(spec, params, Path(args.base), experts, tmp, context=context,
                                       allow_pickle=args.allow_pickle)
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _console().print(
        f"merged {len(experts)} experts with [bold]{spec.name}[/] {report.params} into {out} "
        f"({report.merged_tensors} tensors merged, {report.kept_tensors} kept from the base, {report.seconds:.1f}s)"
    )
    return 0


def _merge_statistics(args: argparse.Namespace, spec, params, experts, exclude, device) -> dict[str, Path]:
    """Statistics of a data-aware method from ``--samples DOMAIN=FILE.jsonl``, cached under ``--cache-dir``."""
    from mergebench.cache import ArtifactCache
    from mergebench.checkpoint.identity import checkpoint_identity
    from mergebench.merging.statistics import read_jsonl, statistics_for

    files = _key_values(args.samples, "--samples")
    if not spec.load().statistic:
        if files:
            raise UsageError(f"method {spec.name!r} uses no training samples; drop --samples")
        return {}
    unknown = sorted(set(files) - set(experts))
    if unknown:
        raise UsageError(f"--samples {unknown[0]}=... names no --expert; experts: {', '.join(experts)}")
    base = Path(args.base)
    return statistics_for(
        spec, params, ArtifactCache(args.cache_dir), (checkpoint_identity(base), base),
        {label: (checkpoint_identity(path), path) for label, path in experts.items()},
        lambda label, count: read_jsonl(Path(files[label]))[:count] if label in files else None,
        exclude=exclude, device=device,
    )


# -- eval ----------------------------------------------------------------------------------
def cmd_eval(args: argparse.Namespace) -> int:
    from mergebench import plugin_manager, progress
    from mergebench.evaluation.backends import check_backend, load_language_model

    registries = plugin_manager.registries()
    tasks = [registries.tasks.get(name) for name in args.task]
    check_backend(args.backend)
    context = _context(args)
    console = _console()
    _verify_cached_inputs([Path(args.model)])
    with progress.use_sink(progress.default_sink()):
        lm = load_language_model(args.backend, args.model, batch_size=args.batch_size, device=context.device)
        for spec in tasks:
            task = spec.load()(spec, context, limit=args.limit)
            task.check_model(lm)
            result = task.evaluate(lm)
            arrow = "higher is better" if result.higher_is_better else "lower is better"
            console.print(f"{spec.name}: {result.metric} = [bold]{result.score:.4f}[/] ± {result.stderr:.4f} "
                          f"(n={result.n}, {arrow})")
    return 0


def _verify_cached_inputs(paths: Sequence[Path]) -> None:
    """Check checkpoint folders given on the command line before anything loads them: a cache artifact
    against its manifest, every folder's safetensors headers and sizes (a truncated shard is one line
    naming the file, also on paths that load with transformers, such as data-aware statistics)."""
    from mergebench.cache.integrity import verify_if_artifact
    from mergebench.checkpoint.reader import check_safetensors

    for path in paths:
        verify_if_artifact(path)
        if path.is_dir():
            check_safetensors(path)


# -- finetune ------------------------------------------------------------------------------
def cmd_finetune(args: argparse.Namespace) -> int:
    from mergebench import plugin_manager, progress
    from mergebench.pipeline import Pipeline

    registries = plugin_manager.registries()
    model = registries.models.get(args.base)
    pipeline = Pipeline(_context(args), registries)
    from mergebench.specs import ExpertSpec

    domains = args.domain or list(model.domains)
    if args.recipe and len(domains) != 1:
        raise UsageError("--recipe trains one expert: name its domain with --domain")
    with progress.use_sink(progress.default_sink()):
        for domain in domains:
            if args.recipe:  # train with this recipe even where the model's expert would be fetched from the hub
                recipe = registries.recipes.get(args.recipe)
                ref = pipeline.trained(model, ExpertSpec(domain=domain, recipe=recipe.name), f"{domain} expert of {model.name}")
            elif domain == "mtl":
                ref = pipeline.mtl(model)
            else:
                ref = pipeline.expert(model, domain)
            _console().print(f"{domain} {'model' if domain == 'mtl' else 'expert'} of {model.name}: {ref.path}")
    return 0


# -- report --------------------------------------------------------------------------------
def cmd_report(args: argparse.Namespace) -> int:
    from mergebench.results import read_json
    from mergebench.results.report import comparison_table, regression_lines, render_session

    results = [r for path in args.results for r in read_json(path)]
    console = _console()
    sys.stdout.write(render_session(results, width=console.width, color=console.is_terminal))
    if args.plots:
        from mergebench.results.plots import write_plots

        for path in write_plots(results, Path(args.results[0]).with_suffix("")):
            console.print(f"written: {path}")
    if args.compare:
        from mergebench.results.gating import compare, parse_thresholds

        deltas = compare(read_json(args.compare), results, parse_thresholds(args.fail))
        console.print(comparison_table(deltas, Path(args.compare).name))
        for line in regression_lines(deltas):
            console.print(line, style="bold red")
        if any(d.failed_by for d in deltas):
            return 1
    elif args.fail:
        raise UsageError("--fail needs --compare BASELINE.json")
    return 0


# -- cache ---------------------------------------------------------------------------------
def _cache(args: argparse.Namespace):
    from mergebench.cache import ArtifactCache

    cache = ArtifactCache(args.cache_dir, sweep=False)  # a dry run deletes nothing, not even at start-up
    if not cache.root.is_dir():
        raise UsageError(f"no artifact cache at {cache.root}; pass --cache-dir DIR (default $MERGEBENCH_CACHE "
                         "or ~/.cache/mergebench)")
    unknown = sorted(set(args.stage or ()) - set(cache.stages()))
    if unknown:
        raise UsageError(f"no stage {unknown[0]!r} in {cache.root}; stages there: {', '.join(cache.stages()) or 'none'}")
    return cache


def _gb(size: int) -> str:
    return f"{size / 1e9:.2f} GB" if size >= 1e7 else f"{size / 1e6:.2f} MB"


def _folders(count: int) -> str:
    return f"{count} folder{'' if count == 1 else 's'}"


def cmd_cache_verify(args: argparse.Namespace) -> int:
    from mergebench.cache.integrity import check, describe

    cache = _cache(args)
    counts = {"ok": 0, "corrupt": 0, "unverified": 0}
    hashed, seconds, corrupt = 0, 0.0, []
    for path in cache.artifacts(args.stage or ()):
        verdict = check(path)
        counts[verdict.status] += 1
        hashed, seconds = hashed + verdict.bytes_hashed, seconds + verdict.seconds
        name = describe(path).removeprefix("cached artifact ")
        if verdict.status == "ok":
            print(f"OK          {name}")
        elif verdict.status == "corrupt":
            print(f"CORRUPT     {name}: {'; '.join(verdict.problems)}")
            corrupt.append(path)
        else:
            print(f"UNVERIFIED  {name}: no manifest (built before mergebench recorded file hashes)")
    print(f"{sum(counts.values())} artifacts in {cache.root}: {counts['ok']} OK, {counts['corrupt']} corrupt, "
          f"{counts['unverified']} unverified ({_gb(hashed)} hashed in {seconds:.1f}s)")
    for path in corrupt:
        print(f"delete {path} to have it rebuilt on the next run", file=sys.stderr)
    return 1 if corrupt else 0


def cmd_cache_gc(args: argparse.Namespace) -> int:
    from mergebench.cache.gc import execute, plan

    if args.older_than is not None and args.older_than < 0:
        raise UsageError("--older-than takes a number of days >= 0")
    cache = _cache(args)
    items = plan(cache, older_than_days=args.older_than, stages=args.stage or None)
    doomed = [item for item in items if item.remove]
    for item in items:
        where = item.path.relative_to(cache.root)
        print(f"{'remove' if item.remove else 'keep  '}  {_gb(item.bytes) if item.remove else '':>10}  {where}  "
              f"({item.kind}: {item.reason})")
    total = sum(item.bytes for item in doomed)
    if not args.yes:
        hint = "" if args.older_than is not None or args.stage else \
            "; add --older-than DAYS or --stage STAGE to also remove unused artifacts"
        print(f"dry run: {_folders(len(doomed))}, {_gb(total)} would be removed from {cache.root}; pass --yes to "
              f"remove them{hint}")
        return 0
    removed = execute(cache, doomed)
    kept = len(doomed) - len(removed)
    print(f"removed {_folders(len(removed))}, {_gb(sum(item.bytes for item in removed))} freed in {cache.root}"
          + (f"; kept {kept} used or locked since the listing" if kept else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mergebench", description="Benchmark ways of merging finetuned LLMs.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("plugins", help="list installed methods, tasks, models and recipes with their providers")
    p.add_argument("-v", "--verbose", action="store_true", help="show where every expert comes from")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("merge", help="merge expert checkpoints into a new Hugging Face checkpoint")
    p.add_argument("--method", required=True)
    p.add_argument("--base", required=True, metavar="DIR")
    p.add_argument("--expert", action="append", default=[], metavar="DOMAIN=DIR", help="repeat for each expert")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--exclude", action="append", metavar="REGEX",
                   help="tensor-name regex kept out of task vectors (default: embeddings and lm_head)")
    p.add_argument("--no-exclude", action="store_true", help="merge embeddings and lm_head too")
    p.add_argument("--allow-pickle", action="store_true", help="also read pytorch_model.bin (only files you trust)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--samples", action="append", default=[], metavar="DOMAIN=FILE.jsonl",
                   help="training samples of an expert for data-aware methods (fisher, regmean, localize_stitch): "
                        'lines of {"prompt": ..., "completion": ...}; repeat for each expert')
    p.add_argument("--cache-dir", default=None, help="where the statistics of data-aware methods are cached")
    p.add_argument("--threads", type=int, default=0, help="tensors merged at once (default: one per CPU core)")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("eval", help="evaluate a checkpoint on tasks")
    p.add_argument("--model", required=True, metavar="DIR")
    p.add_argument("--task", action="append", required=True, metavar="NAME")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto")
    p.add_argument("--cache-dir", default=None, help="where task data is cached")
    p.add_argument("--backend", default="hf", help="evaluation backend: hf (default) or vllm (CUDA, mergebench[vllm])")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("finetune", help="build (or find in the cache) the experts of a registered model")
    p.add_argument("--base", required=True, metavar="MODEL", help="a registered model name, e.g. smollm2-135m-instruct")
    p.add_argument("--domain", action="append", metavar="DOMAIN",
                   help="default: every domain of the model; 'mtl' builds the multi-task baseline")
    p.add_argument("--recipe", metavar="RECIPE", help="train with this registered recipe (e.g. study-math for a new base)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--model-root", action="append", default=[])
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("report", help="print the tables of results files, plot them, compare with a baseline")
    p.add_argument("results", nargs="+", metavar="RESULTS.json")
    p.add_argument("--plots", action="store_true", help="write PNG figures next to the first results file")
    p.add_argument("--compare", metavar="BASELINE.json", help="show changes against a baseline results file")
    p.add_argument("--fail", action="append", default=[], metavar="KIND[:NAME]:AMOUNT",
                   help="exit 1 when a value regresses past AMOUNT (as pytest's --mb-compare-fail)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("cache", help="check the artifact cache's files, remove leftovers and unused artifacts")
    actions = p.add_subparsers(dest="action", required=True)
    q = actions.add_parser("verify", help="check every artifact's files against the SHA-256 manifest of its build "
                                          "(exit 1 if one is corrupt)")
    q.add_argument("--stage", action="append", metavar="STAGE", help="only this stage (base, expert, merged, ...)")
    q.add_argument("--cache-dir", default=None, help="default $MERGEBENCH_CACHE or ~/.cache/mergebench")
    q.set_defaults(func=cmd_cache_verify)
    q = actions.add_parser("gc", help="list (or with --yes remove) killed builds' leftovers and, if asked, unused artifacts")
    q.add_argument("--older-than", type=float, metavar="DAYS",
                   help="also artifacts and resumable work folders not used for DAYS days")
    q.add_argument("--stage", action="append", metavar="STAGE",
                   help="also artifacts of this stage (of any age unless --older-than); repeatable")
    q.add_argument("--yes", action="store_true", help="remove what is listed (default: a dry run)")
    q.add_argument("--cache-dir", default=None, help="default $MERGEBENCH_CACHE or ~/.cache/mergebench")
    q.set_defaults(func=cmd_cache_gc)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except MergebenchError as exc:
        print(f"mergebench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mergebench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
