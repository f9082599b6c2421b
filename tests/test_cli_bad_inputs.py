"""Every command against bad input: exit 2, one line naming the fix, no traceback, nothing left behind.

Each row of :data:`ROWS` is a command line as a user types it (after ``mergebench``), run in a
fresh copy of a small world of good and broken inputs (:func:`world_template` names them; paths
are relative to it), and a fragment of the one line it must print. The row passes when the
command exits 2, prints exactly one line on stderr and nothing on stdout, and leaves every file
and folder of the test as it found it: nothing new, nothing changed, nothing removed (a merge
told to write over its base must not have touched the base). To cover a new mistake, add a row.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests import cli_runner
from tests.test_checkpoint import truncated_copy

PLUGIN_METADATA = "Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n"


@dataclass(frozen=True)
class Row:
    id: str
    command: str  # after ``mergebench``, paths relative to the world
    says: str  # a fragment of the one line, naming what is wrong or the fix
    env: dict = field(default_factory=dict)  # extra environment; ``{world}`` is replaced by its path
    read_only: str = ""  # a folder of the world mounted read-only for the command

    def __str__(self) -> str:
        return self.id


M = "merge --method task_arithmetic --base base --expert math=math --expert coding=coding --device cpu"
F = "merge --method fisher --base base --device cpu --samples math=data/math.jsonl"
E = "eval --task toy_math --device cpu"
R = "report results.json"
BROKEN_PLUGIN = {"PYTHONPATH": "{world}/broken_plugin"}

ROWS = [
    # the command line itself
    Row("no-command", "", "the following arguments are required"),
    Row("command-typo", "mrege", "invalid choice: 'mrege'"),
    Row("unknown-option", "plugins --all", "unrecognized arguments: --all"),
    Row("plugins-name-typo", "plugins tiess", "no method, task, model or recipe is named 'tiess'; did you mean 'ties'?"),
    Row("plugins-format-typo", "plugins --format tabel", "invalid choice: 'tabel'"),
    # (``mergebench plugins`` lists the plugins that load and warns of the rest: tests/test_plugins_cli.py)
    Row("plugin-fails-to-import-merge", f"{M} --out merged", "MERGEBENCH_DISABLE_PLUGINS=", env=BROKEN_PLUGIN),
    Row("plugin-fails-to-import-eval", f"{E} --model base", "MERGEBENCH_DISABLE_PLUGINS=", env=BROKEN_PLUGIN),
    # merge: an --out that would destroy or write into an input, whatever --force says
    Row("out-is-the-base", f"{M} --out base --force", "--out base is --base base; a merge never writes over its inputs"),
    Row("out-is-an-expert", f"{M} --out coding --force", "--out coding is --expert coding=coding"),
    Row("out-holds-the-inputs", f"{M} --out . --force", "--out . contains --base base"),
    Row("out-inside-the-base", f"{M} --out base/merged --force", "--out base/merged is inside --base base"),
    Row("out-symlink-to-the-base", f"{M} --out link_to_base --force", "--out link_to_base is --base base"),
    Row("out-is-the-samples-file", f"{F} --expert math=math --out data/math.jsonl --force",
        "--out data/math.jsonl is --samples math=data/math.jsonl"),
    Row("out-holds-the-samples", f"{F} --expert math=math --out data --force", "--out data contains --samples math=data/math.jsonl"),
    Row("out-is-the-cache", f"{M} --out cache --force", "--out cache is the artifact cache"),
    Row("out-inside-the-cache", f"{F} --expert math=math --cache-dir stats --out stats/merged", "is inside the artifact cache (stats)"),
    # merge: an --out that cannot be written
    Row("out-is-a-file", f"{M} --out a_file", "--out a_file is a file; a merge writes a checkpoint folder"),
    Row("out-is-a-file-force", f"{M} --out a_file --force", "never replaces a file, also with --force"),
    Row("out-under-a-file", f"{M} --out a_file/merged", "a_file is a file, so nothing can be created under it"),
    Row("out-read-only", f"{M} --out ro/merged", "cannot write in", read_only="ro"),
    Row("out-not-empty", f"{M} --out notes", "exists and is not empty; choose another --out or pass --force"),
    Row("out-force-over-other-files", f"{M} --out notes --force", "holds files but no checkpoint (no config.json)"),
    # merge: options
    Row("method-typo", "merge --method tiez --base base --expert math=math --out merged", "did you mean 'ties'"),
    Row("param-typo", f"{M} --param scalng=0.5 --out merged", "no hyperparameter 'scalng'; did you mean 'scaling'"),
    Row("param-not-a-number", f"{M} --param scaling=half --out merged", "scaling='half' is not a float"),
    Row("param-without-value", f"{M} --param scaling --out merged", "--param 'scaling' must look like KEY=VALUE"),
    Row("no-expert", "merge --method soup --base base --out merged", "give at least one --expert DOMAIN=DIR"),
    Row("expert-twice", f"{M} --expert math=base --out merged", "--expert math is given twice"),
    Row("exclude-not-a-regex", f"{M} --exclude ( --out merged", "--exclude '(' is not a regular expression"),
    Row("threads-negative", f"{M} --threads -1 --out merged", "--threads -1"),
    Row("device-cuda-without-gpu", f"{M} --device cuda --out merged", "no CUDA GPU is visible here; use --device cpu"),
    Row("device-typo", f"{M} --device gpu --out merged", "--device 'gpu' is not a device; use cpu, cuda"),
    # merge: checkpoints
    Row("base-missing", "merge --method soup --base nowhere --expert math=math --out merged", "--base nowhere does not exist"),
    Row("base-is-a-file", "merge --method soup --base a_file --expert math=math --out merged", "--base a_file is a file"),
    Row("base-not-a-checkpoint", "merge --method soup --base empty --expert math=math --out merged", "has no config.json"),
    Row("expert-bad-config", "merge --method soup --base base --expert math=bad_config --out merged", "config.json is not valid JSON"),
    Row("expert-without-weights", "merge --method soup --base base --expert math=no_weights --out merged", "has no model weights"),
    Row("expert-truncated", "merge --method soup --base base --expert math=truncated --out merged", "truncated or corrupt"),
    Row("expert-pickle-only", "merge --method soup --base base --expert math=pickled --out merged",
        "pass --allow-pickle if you trust the file"),
    Row("expert-other-architecture", "merge --method soup --base base --expert math=gemma --out merged",
        "is a Gemma2ForCausalLM but the base is a LlamaForCausalLM"),
    # merge: samples and data-aware methods
    Row("samples-without-statistics", f"{M} --samples math=data/math.jsonl --out merged", "uses no training samples; drop --samples"),
    Row("samples-missing-for-an-expert", f"{F} --expert math=math --expert coding=coding --out merged",
        "no training samples for expert(s) coding: method 'fisher' computes fisher statistics"),
    Row("samples-for-no-expert", f"{F} --expert math=math --samples code=data/math.jsonl --out merged", "--samples code=... names no --expert"),
    Row("samples-file-missing", "merge --method fisher --base base --expert math=math --samples math=nowhere.jsonl --out merged",
        "samples file nowhere.jsonl does not exist"),
    Row("samples-not-json", "merge --method fisher --base base --expert math=math --samples math=data/not_json.jsonl --out merged",
        "data/not_json.jsonl:1 is not JSON"),
    Row("samples-not-text", "merge --method fisher --base base --expert math=math --samples math=a_file.gz --out merged",
        "--samples math=a_file.gz is not UTF-8 text"),
    Row("samples-empty", "merge --method fisher --base base --expert math=math --samples math=data/empty.jsonl --out merged",
        "has no samples"),
    Row("fisher-pickle-only", f"{F} --expert math=pickled --out merged", "statistics of data-aware methods load safetensors only"),
    Row("fisher-pickle-only-allowed", f"{F} --expert math=pickled --allow-pickle --out merged", "also with --allow-pickle"),
    Row("fisher-truncated", f"{F} --expert math=truncated --out merged", "truncated or corrupt"),
    Row("fisher-other-architecture", f"{F} --expert math=gemma --out merged", "is a Gemma2ForCausalLM but the base is a LlamaForCausalLM"),
    # eval
    Row("eval-model-missing", f"{E} --model nowhere", "--model nowhere does not exist"),
    Row("eval-model-is-a-file", f"{E} --model a_file", "--model a_file is a file"),
    Row("eval-not-a-checkpoint", f"{E} --model empty", "--model empty has no config.json"),
    Row("eval-bad-config", f"{E} --model bad_config", "config.json is not valid JSON"),
    Row("eval-without-weights", f"{E} --model no_weights", "has no model weights"),
    Row("eval-truncated", f"{E} --model truncated", "truncated or corrupt"),
    Row("eval-pickle-only", f"{E} --model pickled", "evaluation loads safetensors only"),
    Row("eval-without-tokenizer", f"{E} --model no_tokenizer", "has no tokenizer files"),
    Row("eval-task-typo", "eval --model base --task toy_mth", "did you mean 'toy_math'"),
    Row("eval-backend-typo", f"{E} --model base --backend vlm", "did you mean 'vllm'"),
    Row("eval-limit-zero", f"{E} --model base --limit 0", "--limit 0"),
    Row("eval-batch-size-zero", f"{E} --model base --batch-size 0", "--batch-size 0"),
    Row("eval-cuda-without-gpu", "eval --model base --task toy_math --device cuda", "no CUDA GPU is visible here"),
    # finetune
    Row("finetune-model-typo", "finetune --base tiny-lama --domain math", "did you mean 'tiny-llama'"),
    Row("finetune-domain-typo", "finetune --base tiny-llama --domain mth", "has no 'mth' expert"),
    Row("finetune-recipe-typo", "finetune --base tiny-llama --domain math --recipe synthetic-mth", "did you mean 'synthetic-math'"),
    Row("finetune-recipe-for-all-domains", "finetune --base tiny-llama --recipe synthetic-math", "name its domain with --domain"),
    Row("finetune-no-multi-task-baseline", "finetune --base llama-3.2-3b --domain mtl", "has no multi-task baseline"),
    Row("finetune-hub-base-truncated", "finetune --base llama-3.2-3b --domain math --recipe synthetic-math --model-root models",
        "truncated or corrupt"),
    Row("finetune-hub-base-unreachable", "finetune --base llama-3.2-3b --domain math --recipe synthetic-math",
        "MERGEBENCH_MODEL_ROOT=DIR"),
    Row("finetune-cuda-without-gpu", "finetune --base tiny-llama --domain math --device cuda", "no CUDA GPU is visible here"),
    # report
    Row("report-missing", "report nowhere.json", "results file nowhere.json does not exist"),
    Row("report-folder", "report data", "is a folder, not a results file"),
    Row("report-not-json", "report data/not_json.jsonl", "is not JSON"),
    Row("report-empty-file", "report empty.json", "is empty, not a mergebench results file"),
    Row("report-json-not-results", "report not_results.json", "not a mergebench results file (no list of 'cases')"),
    Row("report-case-not-a-result", "report bad_case.json", "case 0 is not a mergebench result"),
    Row("report-baseline-not-results", f"{R} --compare not_results.json", "--compare baseline not_results.json is JSON but not"),
    Row("report-baseline-missing", f"{R} --compare nowhere.json", "--compare baseline nowhere.json does not exist"),
    Row("report-fail-without-compare", f"{R} --fail normalized:2%", "--fail needs --compare BASELINE.json"),
    Row("report-fail-malformed", f"{R} --compare results.json --fail normalised:2%", "--fail 'normalised:2%': expected KIND"),
    Row("report-items-not-in-pool", "report items_not_in_pool.json", "are not in the file's 'item_values' pool"),
    Row("report-items-pool-not-a-mapping", "report pool_not_a_mapping.json", "its 'item_values' is not a mapping"),
    Row("report-items-truncated", "report items_truncated.json", "the file was edited or truncated"),
    Row("report-items-do-not-match", "report items_mismatch.json", "per-item values do not match"),
    Row("report-alpha-out-of-range", f"{R} --alpha 0.9", "--alpha 0.9: the gate's level must be in (0, 0.5]"),
    Row("report-resamples-too-few", f"{R} --resamples 10", "--resamples 10: a bootstrap needs at least 100"),
    Row("report-plots-read-only", "report ro/results.json --plots", "--plots writes its figures next to the first results file",
        read_only="ro"),
    # cache
    Row("cache-without-action", "cache", "required: {verify,gc}"),
    Row("cache-verify-no-cache", "cache verify --cache-dir nowhere", "no artifact cache at nowhere"),
    Row("cache-verify-cache-is-a-file", "cache verify --cache-dir a_file", "no artifact cache at a_file"),
    Row("cache-verify-stage-typo", "cache verify --stage bse", "no stage 'bse'"),
    Row("cache-gc-negative-days", "cache gc --older-than -1", "--older-than takes a number of days >= 0"),
    Row("cache-gc-days-not-a-number", "cache gc --older-than month", "invalid float value: 'month'"),
    Row("cache-gc-stage-typo", "cache gc --stage expret", "no stage 'expret'"),
]


@pytest.fixture(scope="module")
def world_template(tiny_llama, tiny_experts, tiny_gemma2, tmp_path_factory) -> Path:
    """Good and broken inputs, built once; each row gets its own copy."""
    import torch

    from tests.helpers import load_tensors
    from tests.test_results import case

    world = tmp_path_factory.mktemp("bad-inputs") / "world"
    world.mkdir()
    shutil.copytree(tiny_llama, world / "base")
    for domain in ("math", "coding"):
        shutil.copytree(tiny_experts[domain], world / domain)
    shutil.copytree(tiny_gemma2, world / "gemma")
    truncated_copy(tiny_experts["math"], world / "truncated")
    shutil.copytree(tiny_experts["math"], world / "pickled", ignore=shutil.ignore_patterns("*.safetensors"))
    torch.save(load_tensors(tiny_experts["math"]), world / "pickled" / "pytorch_model.bin")
    shutil.copytree(tiny_experts["math"], world / "no_weights", ignore=shutil.ignore_patterns("*.safetensors"))
    shutil.copytree(tiny_experts["math"], world / "bad_config")
    (world / "bad_config" / "config.json").write_text('{"model_type": "llama",')
    shutil.copytree(tiny_experts["math"], world / "no_tokenizer", ignore=shutil.ignore_patterns("tokenizer*", "chat_template*"))
    (world / "empty").mkdir()
    (world / "notes").mkdir()
    (world / "notes" / "todo.txt").write_text("my notes, not a checkpoint")
    (world / "a_file").write_text("a file")
    (world / "a_file.gz").write_bytes(bytes.fromhex("1f8b0800000000000003"))  # gzip, not text
    (world / "link_to_base").symlink_to("base")
    (world / "data").mkdir()
    (world / "data" / "math.jsonl").write_text(json.dumps({"prompt": "Add 2 and 2.", "completion": "4"}) + "\n")
    (world / "data" / "not_json.jsonl").write_text("prompt: Add 2 and 2.\n")
    (world / "data" / "empty.jsonl").write_text("")
    results = {"mergebench_results": 1, "meta": {}, "cases": [case("toy_math", "math", 0.5, expert=0.6).to_dict()]}
    (world / "results.json").write_text(json.dumps(results))
    (world / "empty.json").write_text("")
    (world / "not_results.json").write_text("[]")
    (world / "bad_case.json").write_text(json.dumps({"cases": [{"task": "toy_math"}]}))
    write_format_2_breakages(world)
    (world / "ro").mkdir()
    shutil.copy(world / "results.json", world / "ro" / "results.json")
    (world / "cache" / "expert").mkdir(parents=True)  # an artifact cache with one (empty) stage
    shutil.copytree(world / "truncated", world / "models" / "meta-llama" / "Llama-3.2-3B")
    site = world / "broken_plugin"
    (site / "mb_broken-0.1.dist-info").mkdir(parents=True)
    (site / "mb_broken-0.1.dist-info" / "METADATA").write_text(PLUGIN_METADATA.format(name="mb-broken"))
    (site / "mb_broken-0.1.dist-info" / "entry_points.txt").write_text("[mergebench]\nbroken = mb_broken\n")
    (site / "mb_broken.py").write_text("import mergebench_no_such_module  # an uninstalled dependency\n")
    return world


def write_format_2_breakages(world: Path) -> None:
    """Results files with per-item values (format 2), each broken in one way an edit or a cut-off copy breaks them."""
    from mergebench.results import write_json
    from tests.item_results import item_case

    good = json.loads(write_json([item_case("toy_math", "math", [1, 0, 1, 1], [1, 1, 1, 0])], world / "items.json").read_text())
    (world / "items.json").unlink()
    broken = {
        "items_not_in_pool": lambda d: d.update(item_values={}),
        "pool_not_a_mapping": lambda d: d.update(item_values=[1, 2]),
        "items_truncated": lambda d: [blob.update(n=40) for blob in d["item_values"].values()],
        "items_mismatch": lambda d: d["cases"][0]["merged"].update(n=9),
    }
    for name, breakage in broken.items():
        data = json.loads(json.dumps(good))
        breakage(data)
        (world / f"{name}.json").write_text(json.dumps(data))


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under ``root``: its relative path → the SHA-256 of a file, a link's target, or "dir".

    Python's own bytecode caches (``__pycache__``, written on import unless PYTHONDONTWRITEBYTECODE
    is set, which CI images differ on) are not mergebench's doing and are left out."""
    found = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in dirs + files:
            path = Path(folder) / name
            key = str(path.relative_to(root))
            if path.is_symlink():
                found[key] = f"-> {os.readlink(path)}"
            elif path.is_dir():
                found[key] = "dir"
            else:
                found[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def read_only_prefix(folder: Path) -> list[str]:
    """A command prefix that runs the command with ``folder`` bind-mounted read-only (a private mount namespace)."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-Urm", "true"], capture_output=True).returncode:
        pytest.skip("needs unshare(1) and user namespaces to mount a folder read-only")
    script = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" "$1" && shift && exec "$@"'
    return ["unshare", "-Urm", "sh", "-c", script, "sh", str(folder)]


def environment(world: Path, extra: dict | None = None) -> dict[str, str]:
    """The user's environment without MERGEBENCH_* settings, with the world's cache, no hub and no GPU."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MERGEBENCH_")}
    env.update({"MERGEBENCH_CACHE": str(world / "cache"), "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "",
                "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1", **(extra or {})})
    return env


@pytest.fixture(scope="module")
def forks():
    server = cli_runner.ForkServer()
    yield server
    server.close()


def mergebench(forks, world: Path, command: list[str], env: dict | None = None, read_only: str = "") -> subprocess.CompletedProcess:
    """The command in ``world``: forked from a process that imported torch once, or, to mount a folder
    read-only, in a fresh interpreter inside its own mount namespace."""
    if not read_only:
        return forks.run(command, cwd=world, env=environment(world, env))
    return subprocess.run([*read_only_prefix(world / read_only), sys.executable, "-m", "mergebench.cli", *command],
                          cwd=world, env=environment(world, env), capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("row", ROWS, ids=str)
def test_bad_input_is_one_line_naming_the_fix_and_leaves_everything_as_it_was(row: Row, world_template: Path, forks, tmp_path: Path):
    world = shutil.copytree(world_template, tmp_path / "world", symlinks=True)
    before = snapshot(tmp_path)
    done = mergebench(forks, world, shlex.split(row.command), {k: v.format(world=world) for k, v in row.env.items()}, row.read_only)
    lines = done.stderr.splitlines()
    assert done.returncode == 2, (done.returncode, done.stderr[-3000:])
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert lines[0].startswith("mergebench"), lines[0]
    assert row.says in lines[0], lines[0]
    assert done.stdout == ""
    assert snapshot(tmp_path) == before
