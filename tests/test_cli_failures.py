"""How a command ends when it goes wrong beyond bad input: a bug, the environment, a closed pipe; and
what ``merge --force`` does to an earlier merge."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mergebench.cli import failures
from mergebench.errors import UsageError
from tests.cli_runner import ForkServer
from tests.helpers import load_tensors
from tests.test_cli_bad_inputs import PLUGIN_METADATA, environment, snapshot

CRASHING_PLUGIN = '''
from mergebench import hookimpl
from mergebench.merging.api import MergeMethod
from mergebench.specs import MethodSpec


class Crashing(MergeMethod):
    def merge_tensor(self, name, base, experts):
        raise ZeroDivisionError("division by zero in a plugin's merge_tensor")


@hookimpl
def mergebench_register_methods(register):
    register(MethodSpec(name="crashing", impl="mb_crashing:Crashing", family="coefficient"))
'''
INTERNAL = ("mergebench: internal error: ZeroDivisionError: division by zero in a plugin's merge_tensor. This is a bug "
            "in mergebench or a plugin: run again with MERGEBENCH_DEBUG=1 for the traceback and report it")


@pytest.fixture
def crashing_plugin(tmp_path) -> dict[str, str]:
    site = tmp_path / "site"
    (site / "mb_crashing-0.1.dist-info").mkdir(parents=True)
    (site / "mb_crashing-0.1.dist-info" / "METADATA").write_text(PLUGIN_METADATA.format(name="mb-crashing"))
    (site / "mb_crashing-0.1.dist-info" / "entry_points.txt").write_text("[mergebench]\ncrashing = mb_crashing\n")
    (site / "mb_crashing.py").write_text(CRASHING_PLUGIN)
    return {"PYTHONPATH": str(site)}


def test_a_bug_is_one_line_with_exit_70_and_the_merge_leaves_nothing_behind(tiny_llama, tiny_experts, crashing_plugin, tmp_path):
    """The real entry point, in a fresh interpreter: no traceback, and neither the temporary merge
    folder nor the folders created above --out survive the crash."""
    before = snapshot(tmp_path)
    done = subprocess.run([sys.executable, "-m", "mergebench.cli", "merge", "--method", "crashing", "--base", str(tiny_llama),
                           "--expert", f"math={tiny_experts['math']}", "--out", "new/nested/merged", "--device", "cpu"],
                          cwd=tmp_path, env=environment(tmp_path, crashing_plugin), capture_output=True, text=True)
    assert done.returncode == 70, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1] == INTERNAL
    assert snapshot(tmp_path) == before


def test_mergebench_debug_prints_the_traceback_before_the_same_line(tiny_llama, tiny_experts, crashing_plugin, tmp_path):
    forks = ForkServer()
    try:
        done = forks.run(["merge", "--method", "crashing", "--base", str(tiny_llama), "--expert", f"math={tiny_experts['math']}",
                          "--out", "merged", "--device", "cpu"], cwd=tmp_path,
                         env=environment(tmp_path, {**crashing_plugin, "MERGEBENCH_DEBUG": "1"}))
    finally:
        forks.close()
    assert done.returncode == 70
    assert "Traceback (most recent call last)" in done.stderr and 'in merge_tensor' in done.stderr
    assert done.stderr.splitlines()[-1] == INTERNAL
    assert not (tmp_path / "merged").exists()


def test_the_environment_failing_is_exit_2_and_one_line(capsys, monkeypatch):
    monkeypatch.delenv(failures.DEBUG_ENV, raising=False)

    def full_disk() -> int:
        raise OSError(errno.ENOSPC, "No space left on device", "/data/merged/model.safetensors")

    assert failures.run(full_disk) == 2
    assert capsys.readouterr().err == ("mergebench: error: [Errno 28] No space left on device: "
                                       "'/data/merged/model.safetensors'; run with MERGEBENCH_DEBUG=1 for the traceback\n")

    def usage() -> int:
        raise UsageError("--limit 0: give a number of items per task\n(at least 1)")

    assert failures.run(usage) == 2
    assert capsys.readouterr().err == "mergebench: error: --limit 0: give a number of items per task (at least 1)\n"


def test_a_reader_that_stops_reading_ends_the_command_quietly(tmp_path):
    """``mergebench report results.json | head -1``: the pipe closes under the report, which says nothing."""
    from mergebench.results import write_json
    from tests.test_results import case

    results = write_json([case(f"toy_{d}", d, 0.5, expert=0.6, method=m) for d in ("math", "coding") for m in ("soup", "ties")],
                         tmp_path / "results.json")
    read, write = os.pipe()
    os.close(read)  # nobody will read what the report prints
    done = subprocess.run([sys.executable, "-m", "mergebench.cli", "report", str(results)], stdout=write,
                          stderr=subprocess.PIPE, text=True, env=environment(tmp_path))
    os.close(write)
    assert (done.returncode, done.stderr) == (141, "")


def test_force_replaces_an_earlier_merge_in_one_rename(tiny_llama, tiny_experts, tmp_path):
    forks = ForkServer()
    merge = ["merge", "--method", "task_arithmetic", "--base", str(tiny_llama), "--expert", f"math={tiny_experts['math']}",
             "--device", "cpu", "--out", "link"]
    try:
        (tmp_path / "runs").mkdir()
        (tmp_path / "link").symlink_to("runs/merged")  # --out through a symlink: the folder it names is replaced
        first = forks.run([*merge, "--param", "scaling=1.0"], cwd=tmp_path, env=environment(tmp_path))
        assert first.returncode == 0, first.stderr
        refused = forks.run([*merge, "--param", "scaling=0.5"], cwd=tmp_path, env=environment(tmp_path))
        assert refused.returncode == 2 and "pass --force to replace it" in refused.stderr
        second = forks.run([*merge, "--param", "scaling=0.5", "--force"], cwd=tmp_path, env=environment(tmp_path))
        assert second.returncode == 0, second.stderr
    finally:
        forks.close()
    base, math = load_tensors(tiny_llama), load_tensors(tiny_experts["math"])
    name = "model.layers.0.mlp.up_proj.weight"
    torch.testing.assert_close(load_tensors(tmp_path / "runs" / "merged")[name],
                               base[name] + 0.5 * (math[name] - base[name]), rtol=0, atol=1e-6)
    assert (tmp_path / "link").is_symlink()
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["merged"], "no temporary or set-aside folder is left"


def test_the_overlap_of_out_and_an_input_is_found_under_another_name(tiny_llama, tiny_experts, tmp_path):
    """Devices and inodes are compared (a hard link, a bind mount), then resolved paths (not created yet)."""
    from mergebench.cli.out_dir import relation

    assert relation(Path(tiny_llama), Path(tiny_llama)) == "is"
    assert relation(Path(tiny_llama).parent, Path(tiny_llama)) == "contains"
    assert relation(Path(tiny_llama) / "sub" / "merged", Path(tiny_llama)) == "is inside"
    assert relation(tmp_path / "merged", Path(tiny_llama)) is None
    assert relation(tmp_path / "cache" / "merged", tmp_path / "cache") == "is inside"  # neither exists yet
    hard = tmp_path / "hard"
    hard.mkdir()
    os.link(tiny_experts["math"] / "config.json", hard / "config.json")  # a file with two names
    assert relation(hard / "config.json", tiny_experts["math"] / "config.json") == "is"
