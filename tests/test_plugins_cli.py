"""``mergebench plugins [NAME]`` and ``mergebench merge --help`` as a new user meets them: through a pipe, at 80 columns,
in a terminal, with a typo, and with a broken plugin installed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import pytest

from mergebench import plugin_manager
from mergebench.cli.plugin_text import value

CLI = [sys.executable, "-m", "mergebench.cli"]


def run(*args: str, env: dict | None = None, columns: int | None = 80) -> subprocess.CompletedProcess:
    environ = {**os.environ, **(env or {})}
    environ.pop("COLUMNS", None)
    if columns:
        environ["COLUMNS"] = str(columns)
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=environ)


@pytest.fixture
def cli(capsys, monkeypatch):
    """The command in this process (torch, which deriving data needs imports, loads once), 80 columns, stdout not a terminal."""
    monkeypatch.setenv("COLUMNS", "80")

    def call(*args: str) -> subprocess.CompletedProcess:
        from mergebench.cli import main

        try:
            code = main(list(args))
        except SystemExit as exc:  # --help
            code = exc.code
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    return call


def blocks(text: str) -> dict[str, str]:
    """The listing's blocks by their first word (a method, task, model or recipe name)."""
    found = {}
    for block in text.split("\n\n"):
        head = block.split(None, 1)
        if head and "  (" in block.splitlines()[0]:
            found[head[0]] = block
    return found


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def registries():
    return plugin_manager.registries()


def test_the_listing_through_a_pipe_at_80_columns_cuts_nothing(registries):
    done = run("plugins")
    assert done.returncode == 0, done.stderr
    assert "…" not in done.stdout and "┃" not in done.stdout
    assert max(len(line) for line in done.stdout.splitlines()) <= 80
    listed = blocks(done.stdout)
    for spec in registries.methods.specs():
        block = listed[spec.name]
        for hp in spec.hyperparams:
            assert f"    {hp.name}={value(hp.default)}" + (f" (grid of {len(hp.grid)})" if hp.grid else "") in block.splitlines(), \
                (spec.name, hp.name, block)
        assert flat(spec.summary) in flat(block)
    assert blocks(done.stdout)["model_stock"].endswith("    no hyperparameters")  # soup has its embeddings knob
    for registry in (registries.tasks, registries.models, registries.recipes):
        assert set(registry.names()) <= set(listed), set(registry.names()) - set(listed)
    assert "ties  (sparsification; data: validation)" in done.stdout
    assert "della  (sparsification; data: validation; opt-in)" in done.stdout
    assert "gsm8k_bpb_mini  (math; bits_per_byte ↓; suites mini, mini-gemma)" in done.stdout


def test_the_listing_is_tables_only_on_a_terminal_wide_enough_for_them():
    """A real pseudo-terminal: Rich's tables at 250 columns, blocks at 100 (the tables would cut cells there)."""
    pty = pytest.importorskip("pty")
    import fcntl
    import struct
    import termios

    def on_terminal(columns: int) -> str:
        main, child = pty.openpty()
        fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
        environ = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR", "TERM")}
        proc = subprocess.Popen([*CLI, "plugins"], stdout=child, stderr=subprocess.DEVNULL, env={**environ, "TERM": "xterm"})
        os.close(child)
        chunks = []
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        proc.wait()
        os.close(main)
        return b"".join(chunks).decode()

    wide, narrow = (re.sub(r"\x1b\[[0-9;]*m", "", on_terminal(columns)) for columns in (250, 100))
    assert "┃ name" in wide and "…" not in wide
    assert "┃" not in narrow and "ties  (sparsification; data: validation)" in narrow


def test_format_table_keeps_the_tables_on_request():
    done = run("plugins", "--format", "table", columns=300)
    assert done.returncode == 0 and "┃ name" in done.stdout and "…" not in done.stdout


def test_plugins_ties_shows_every_hyperparameters_doc_range_and_grid(cli, registries):
    done = cli("plugins", "ties")
    assert done.returncode == 0, done.stderr
    text = flat(done.stdout)
    spec = registries.methods.get("ties")
    assert done.stdout.startswith("ties: merge method (sparsification)\n")
    assert flat(spec.summary) in text and "reference: https://arxiv.org/abs/2306.01708" in text
    for hp in spec.hyperparams:
        assert hp.doc and flat(hp.doc) in text, hp.name
        assert f"{hp.name} = {value(hp.default)}" in done.stdout
    assert "grid: 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0 (10 points)" in text
    assert "density = 0.2 fraction of each task vector's entries kept range: 0.0 to 1.0 grid: 0.1, 0.2, 0.3 (3 points)" in text
    assert "choices: global, tensor" in text
    assert "validation grid: 30 points" in text  # 10 scalings x 3 densities, the study's Table 7
    assert "data: validation:" in text and "provided by: plugin builtin-methods, mergebench 0.1.0" in text
    assert "set with pytest benchmarks --mb-param ties.KEY=VALUE or mergebench merge --param KEY=VALUE" in text


def test_plugins_name_shows_a_models_overrides_and_every_other_kind(cli, registries):
    fisher = flat(cli("plugins", "fisher").stdout)
    assert "samples = 1000 training samples per expert" in fisher
    assert "default on smollm2-135m-instruct, gemma-3-270m: 8" in fisher
    assert "data: training_samples: samples of each expert's training data" in fisher
    task = flat(cli("plugins", "gsm8k_bpb_mini").stdout)
    assert "metric: bits_per_byte, lower is better" in task and "suites: mini, mini-gemma" in task
    assert "version: 2" in task and "implementation: mergebench_builtins.tasks.gsm8k:GSM8KGoldBPB" in task
    validation = flat(cli("plugins", "val_mmlu_stem_mini").stdout)
    assert "role: validation: a surrogate for hyperparameter search (--mb-search), never a case" in validation
    model = flat(cli("plugins", "smollm2-135m-instruct").stdout)
    assert "merge defaults: samples=8" in model and "math recipe mini-math" in model
    assert "mtl recipe mini-mtl; the multi-task baseline, --mb-methods mtl" in model
    hub = flat(cli("plugins", "gemma-2-2b-it").stdout)
    assert "base: hub google/gemma-2-2b-it" in hub
    assert "math hub MergeBench/gemma-2-2b-it_math (training data: recipe study-math)" in hub
    recipe = flat(cli("plugins", "mini-math").stdout)
    assert "experts of: gemma-3-270m, smollm2-135m-instruct" in recipe
    assert "slerp: merge method (other, opt-in)" in cli("plugins", "slerp").stdout
    assert "experts: exactly 2" in flat(cli("plugins", "slerp").stdout)


def test_an_unknown_name_is_exit_2_with_did_you_mean(cli):
    done = cli("plugins", "tiess")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip() == ("mergebench: error: no method, task, model or recipe is named 'tiess'; "
                                   "did you mean 'ties'? (`mergebench plugins` lists them all)")
    assert "did you mean 'mini-math'?" in cli("plugins", "mini_math").stderr


def test_merge_help_lists_the_methods_with_summaries_hyperparameters_defaults_and_docs(cli, registries):
    done = cli("merge", "--help")
    assert done.returncode == 0, done.stderr
    epilog = done.stdout.split("\nmethods (--method NAME", 1)[1]
    text = flat(epilog)
    for spec in registries.methods.specs():
        assert flat(f"{spec.name}: {spec.summary}") in text, spec.name
        for hp in spec.hyperparams:
            assert flat(f"{hp.name}={value(hp.default)} {hp.doc}") in text, (spec.name, hp.name)
    assert "scope=global top-k over the whole model per expert" in text
    assert max(len(line) for line in done.stdout.splitlines()) <= 80


def test_a_plugin_that_sets_a_hyperparameter_source_shows_it(tmp_path, cli):
    """``HyperParam.source`` is read with getattr: a spec type that has it shows it, one without it shows nothing."""
    site = _plugin(tmp_path, "mb_sourced", """
        from dataclasses import dataclass
        from mergebench import hookimpl
        from mergebench.specs import HyperParam, MethodSpec

        @dataclass(frozen=True)
        class SourcedParam(HyperParam):
            source: str = ""

        @hookimpl
        def mergebench_register_methods(register):
            register(MethodSpec(name="sourced_soup", impl="mergebench_builtins.methods.soup:Soup", hyperparams=(
                SourcedParam("weight", 0.5, grid=(0.25, 0.5), low=0.0, high=1.0, doc="how much of each expert",
                             source="the paper's Table 2"),)))
    """)
    text = flat(run("plugins", "sourced_soup", env={"PYTHONPATH": site}).stdout)
    assert "weight = 0.5 how much of each expert range: 0.0 to 1.0 grid: 0.25, 0.5 (2 points) source: the paper's Table 2" in text
    assert "source: study code: prepare_args.py:13 (--K 0.2)" in flat(cli("plugins", "ties").stdout)  # built-ins fill it


def test_the_verbose_listing_names_where_each_default_comes_from(registries):
    """``plugins -v`` puts each hyperparameter's source under it; without ``-v`` the listing stays one line each."""
    verbose, plain = run("plugins", "-v"), run("plugins")
    ties_verbose, ties_plain = blocks(verbose.stdout)["ties"], blocks(plain.stdout)["ties"]
    assert "default from:" not in ties_plain
    lines = ties_verbose.splitlines()
    at = lines.index("    density=0.2 (grid of 3)")
    assert flat("\n".join(lines[at + 1:at + 3])).startswith("default from: study code: prepare_args.py:13 (--K 0.2)")
    assert max(len(line) for line in verbose.stdout.splitlines()) <= 80


def test_broken_plugins_cost_only_themselves_in_the_listing_and_the_merge_help(tmp_path, registries):
    site = _plugin(tmp_path, "mb_broken_import", "import a_module_that_is_not_installed\n")
    _plugin(tmp_path, "mb_misspelt", """
        from mergebench import hookimpl

        @hookimpl
        def mergebench_register_method(register):
            pass
    """)
    _plugin(tmp_path, "mb_raises", """
        from mergebench import hookimpl

        @hookimpl
        def mergebench_register_methods(register):
            raise RuntimeError("no GPU here")
    """)
    env = {"PYTHONPATH": site}
    listing = run("plugins", env=env)
    assert listing.returncode == 0, listing.stderr
    assert set(registries.methods.names()) <= set(blocks(listing.stdout))
    assert "mergebench: warning: plugin 'mb_broken_import' failed to import: ModuleNotFoundError" in listing.stderr
    assert "mergebench: warning: plugin 'mb_misspelt' was left out: unknown hook 'mergebench_register_method'" in listing.stderr
    assert "mergebench: warning: plugin 'mb_raises' (mb_raises 0.1) failed while registering: no GPU here" in listing.stderr
    assert "block it with MERGEBENCH_DISABLE_PLUGINS=mb_raises" in listing.stderr
    assert "Traceback" not in listing.stderr
    help_text = run("merge", "--help", env=env)
    assert help_text.returncode == 0, help_text.stderr
    assert "ties: Trim task vectors" in help_text.stdout
    assert "not listed: plugin 'mb_broken_import' failed to import: ModuleNotFoundError" in flat(help_text.stdout)
    assert "ties: merge method" in run("plugins", "ties", env=env).stdout
    unknown = run("plugins", "tiess", env=env)
    assert unknown.returncode == 2 and "it may come from a plugin that did not load: plugin 'mb_broken_import'" in unknown.stderr
    # a benchmark run still refuses to start with a broken plugin, naming it
    assert "a mergebench plugin failed to load" in run("merge", "--method", "soup", "--base", "b", "--expert", "m=e",
                                                      "--out", str(tmp_path / "o"), env=env).stderr


def test_quitting_the_pager_early_is_no_traceback():
    done = subprocess.run(f"{sys.executable} -m mergebench.cli plugins | head -n 1", shell=True, capture_output=True, text=True)
    assert done.stdout == "Installed plugins\n" and "Traceback" not in done.stderr, done.stderr


def _plugin(tmp_path, name: str, source: str) -> str:
    """A dist-info with a ``mergebench`` entry point, as ``pip install`` of a third-party plugin leaves it."""
    site = tmp_path / "site"
    info = site / f"{name}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[mergebench]\n{name} = {name}\n")
    (site / f"{name}.py").write_text(textwrap.dedent(source))
    return str(site)
