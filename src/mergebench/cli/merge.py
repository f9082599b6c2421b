"""``mergebench merge``: experts into one checkpoint, on the same engine as the pytest cases."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from mergebench.cli import inputs
from mergebench.cli.common import console, key_values
from mergebench.cli.merge_inputs import check_checkpoints, read_samples
from mergebench.cli.method_help import HelpWithMethods
from mergebench.cli.out_dir import check_out, install, missing_parents, remove_created
from mergebench.errors import UsageError
from mergebench.specs import PAPER, SEMANTICS


def cmd_merge(args: argparse.Namespace) -> int:
    from mergebench import plugin_manager, progress
    from mergebench.cache import default_cache_root
    from mergebench.cache.leftovers import out_tmp_path
    from mergebench.merging.api import DEFAULT_EXCLUDE, MergeContext
    from mergebench.merging.engine import merge_checkpoints

    # every check before any work: nothing is read for minutes only to fail, nothing is left behind
    if args.mergekit_config:
        from mergebench.cli.merge_mergekit import from_mergekit_config

        if args.semantics != PAPER:
            raise UsageError(f"--semantics {args.semantics} applies to --method; a --mergekit-config merges as "
                             "mergekit's config says: drop --semantics or give --method instead")
        spec, params, base, experts, exclude = from_mergekit_config(args)
    else:
        if not args.method or not args.base:
            raise UsageError("give --method and --base (or a --mergekit-config)")
        spec = plugin_manager.registries().methods.get(args.method)
        experts = {label: Path(path) for label, path in key_values(args.expert, "--expert").items()}
        if not experts:
            raise UsageError("give at least one --expert DOMAIN=DIR")
        params = spec.resolve_params(key_values(args.param, "--param"), args.semantics)
        exclude = () if args.no_exclude else inputs.regexes(args.exclude or DEFAULT_EXCLUDE, "--exclude")
        base = Path(args.base)
    inputs.at_least(args.threads, 0, "--threads", "the tensors merged at once, or 0 for one per CPU core")
    device = inputs.device(args.device)
    cache_dir = Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_root()
    out = check_out(Path(args.out), {
        "--base": base, **{f"--expert {label}=": path for label, path in experts.items()},
        **{f"--samples {label}=": Path(file) for label, file in key_values(args.samples, "--samples").items()},
        "the artifact cache": cache_dir,
    }, force=args.force)
    samples = read_samples(args.samples, spec, experts)  # from here on torch is imported (the method's class)
    check_checkpoints(base, experts, data_aware=bool(samples), allow_pickle=args.allow_pickle)

    statistics = _merge_statistics(args, spec, params, experts, samples, exclude, device)
    context = MergeContext(seed=args.seed, device=device, exclude=exclude, domains=tuple(experts),
                           statistics=statistics, threads=args.threads)
    created = missing_parents(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_tmp_path(out)  # named by host and pid; dead merges' leftovers next to it are swept
    try:
        with progress.use_sink(progress.default_sink()):
            report = merge_checkpoints(spec, params, base, experts, tmp, context=context, hashed=False,  # not cached
                                       allow_pickle=args.allow_pickle, metadata={"mergebench_semantics": args.semantics})
        install(tmp, out, aside=out_tmp_path(out))
    except BaseException:  # a bug, a full disk, Ctrl-C: no half-written merge, no folders made for it
        shutil.rmtree(tmp, ignore_errors=True)
        remove_created(created)
        raise
    console().print(
        f"merged {len(experts)} experts with [bold]{spec.name}[/] {report.params} ({args.semantics} semantics) into {args.out} "
        f"({report.merged_tensors} tensors merged, {report.kept_tensors} kept from the base, {report.seconds:.1f}s)"
    )
    return 0


def _merge_statistics(args: argparse.Namespace, spec, params, experts, samples, exclude, device) -> dict[str, Path]:
    """Statistics of a data-aware method from ``--samples DOMAIN=FILE.jsonl``, cached under ``--cache-dir``."""
    from mergebench.cache import ArtifactCache
    from mergebench.checkpoint.identity import checkpoint_identity
    from mergebench.merging.statistics import statistics_for

    if not samples:
        return {}
    base = Path(args.base)  # data-aware methods have no mergekit form: --base is given
    return statistics_for(
        spec, params, ArtifactCache(args.cache_dir), (checkpoint_identity(base), base),
        {label: (checkpoint_identity(path), path) for label, path in experts.items()},
        lambda label, count: samples[label][:count],
        exclude=exclude, device=device,
    )


def add_parser(sub) -> None:
    p = sub.add_parser("merge", help="merge expert checkpoints into a new Hugging Face checkpoint",
                       add_help=False, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-h", "--help", action=HelpWithMethods)  # the epilog lists the methods, built when asked for
    p.add_argument("--method", help="a method of `mergebench plugins` (or give --mergekit-config)")
    p.add_argument("--base", metavar="DIR")
    p.add_argument("--mergekit-config", metavar="CONFIG.yml",
                   help="run a mergekit YAML config instead of --method/--base/--expert/--param (see the README)")
    p.add_argument("--expert", action="append", default=[], metavar="DOMAIN=DIR", help="repeat for each expert")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--semantics", default=PAPER, choices=SEMANTICS,
                   help="the method as published (paper, default) or as the study's released code computes it "
                        "(study-code): docs/fidelity.md")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--exclude", action="append", metavar="REGEX",
                   help="tensor-name regex kept out of task vectors (default: embeddings and lm_head)")
    p.add_argument("--no-exclude", action="store_true", help="merge embeddings and lm_head too")
    p.add_argument("--allow-pickle", action="store_true",
                   help="also read pytorch_model.bin (only files you trust; data-aware methods read safetensors only)")
    p.add_argument("--force", action="store_true",
                   help="replace --out if it holds an earlier checkpoint (never an input, a file or other files)")
    p.add_argument("--samples", action="append", default=[], metavar="DOMAIN=FILE.jsonl",
                   help="training samples of an expert for data-aware methods (fisher, regmean, localize_stitch): "
                        'lines of {"prompt": ..., "completion": ...}; repeat for each expert')
    p.add_argument("--cache-dir", default=None, help="where the statistics of data-aware methods are cached")
    p.add_argument("--threads", type=int, default=0, help="tensors merged at once (default: one per CPU core)")
    p.set_defaults(func=cmd_merge)
