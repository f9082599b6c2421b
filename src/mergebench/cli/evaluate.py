"""``mergebench eval``: score a checkpoint on tasks, outside the benchmark grid."""

from __future__ import annotations

import argparse

from mergebench.cli import inputs
from mergebench.cli.common import console, run_context
from mergebench.errors import CheckpointError


def cmd_eval(args: argparse.Namespace) -> int:
    from mergebench import plugin_manager, progress
    from mergebench.evaluation.backends import check_backend, load_language_model

    registries = plugin_manager.registries()
    tasks = [registries.tasks.get(name) for name in args.task]
    check_backend(args.backend)
    inputs.at_least(args.limit, 1, "--limit", "a number of items per task")
    inputs.at_least(args.batch_size, 1, "--batch-size", "a number of rows per batch")
    model = inputs.checkpoint_folder(args.model, "--model", pickle_fix=inputs.EVAL_PICKLE_FIX)
    inputs.tokenizer(model, "--model")
    context = run_context(args)
    if args.unsandboxed_code:
        from mergebench.evaluation.sandbox import allow_unsandboxed_code

        allow_unsandboxed_code()
    out = console()
    with progress.use_sink(progress.default_sink()):
        try:
            lm = load_language_model(args.backend, model, batch_size=args.batch_size, device=context.device)
        except (OSError, ValueError) as exc:  # transformers on a folder it cannot read: a missing tokenizer, ...
            raise CheckpointError(f"--model {model} cannot be loaded ({exc}); give a complete Hugging Face checkpoint "
                                  "folder (config.json, weights and tokenizer files)") from None
        for spec in tasks:
            task = spec.load()(spec, context, limit=args.limit)
            task.check_model(lm)
            result = task.evaluate(lm)
            arrow = "higher is better" if result.higher_is_better else "lower is better"
            out.print(f"{spec.name}: {result.metric} = [bold]{result.score:.4f}[/] ± {result.stderr:.4f} "
                          f"(n={result.n}, {arrow})")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint on tasks")
    p.add_argument("--model", required=True, metavar="DIR")
    p.add_argument("--task", action="append", required=True, metavar="NAME")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto")
    p.add_argument("--cache-dir", default=None, help="where task data is cached")
    p.add_argument("--backend", default="hf", help="evaluation backend: hf (default) or vllm (CUDA, mergebench[vllm])")
    p.add_argument("--unsandboxed-code", action="store_true",
                   help="where the kernel sandbox cannot start (no user namespaces), run the generated code of coding "
                        "tasks anyway, WITHOUT isolation: it then sees this machine's files, network and processes, "
                        "with only time and memory limits. Only for a trusted model on a machine you can lose")
    p.set_defaults(func=cmd_eval)
