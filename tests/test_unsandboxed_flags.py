"""The explicit opt-out of the code sandbox, where the kernel offers no namespaces: ``--mb-unsandboxed-code``
in pytest and ``mergebench eval --unsandboxed-code`` reach the sandbox; without them the code is refused."""

from __future__ import annotations

import sys
import textwrap

import pytest

from mergebench import plugin_manager
from mergebench.evaluation.sandbox import policy
from tests.test_cli_bad_inputs import PLUGIN_METADATA

NO_NAMESPACES = "unshare(user, pid, ...) failed: Operation not permitted (errno 1)"
PROBE_TASK = '''
from mergebench import hookimpl
from mergebench.evaluation.api import Task
from mergebench.evaluation.sandbox import Program, run_program
from mergebench.specs import TaskSpec


class RunsCode(Task):
    """Runs one generated program that passes, whatever the model."""

    def evaluate(self, lm):
        outcome = run_program(Program("def f():\\n    return 1\\n", "assert f() == 1\\n"))
        return self.result([float(outcome.passed)], [{"status": outcome.status}])


@hookimpl
def mergebench_register_tasks(register):
    register(TaskSpec(name="runs_code", impl="mb_runs_code:RunsCode", domain="coding", metric="pass@1"))
'''


@pytest.fixture
def no_namespaces(monkeypatch):
    """A host whose kernel sandbox cannot start; the opt-in's environment variable restored (unset) afterwards."""
    monkeypatch.setattr(policy, "namespace_problem", lambda: NO_NAMESPACES)
    monkeypatch.setenv(policy.UNSANDBOXED_ENV, "0")
    monkeypatch.delenv(policy.UNSANDBOXED_ENV)
    policy._warn_unsandboxed.cache_clear()


def test_pytest_option_reaches_the_sandbox(pytester, no_namespaces):
    pytester.makepyfile(test_generated_code=textwrap.dedent('''
        from mergebench.evaluation.sandbox import Program, run_program


        def test_generated_code_runs():
            assert run_program(Program("def f():\\n    return 1\\n", "assert f() == 1\\n")).status == "passed"
    '''))
    refused = pytester.runpytest("-p", "no:cacheprovider")
    refused.assert_outcomes(failed=1)
    refused.stdout.fnmatch_lines(["*SandboxUnavailableError: refusing to execute generated code*"])
    allowed = pytester.runpytest("-p", "no:cacheprovider", "--mb-unsandboxed-code", "-W", "ignore::UserWarning")
    allowed.assert_outcomes(passed=1)


@pytest.fixture
def probe_task(tmp_path, monkeypatch):
    site = tmp_path / "site"
    (site / "mb_runs_code-0.1.dist-info").mkdir(parents=True)
    (site / "mb_runs_code-0.1.dist-info" / "METADATA").write_text(PLUGIN_METADATA.format(name="mb-runs-code"))
    (site / "mb_runs_code-0.1.dist-info" / "entry_points.txt").write_text("[mergebench]\nruns_code = mb_runs_code\n")
    (site / "mb_runs_code.py").write_text(PROBE_TASK)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(plugin_manager, "_cached", None)
    yield
    sys.modules.pop("mb_runs_code", None)


def test_eval_option_reaches_the_sandbox(tiny_llama, tmp_path, probe_task, no_namespaces, capsys):
    from mergebench.cli import main

    command = ["eval", "--model", str(tiny_llama), "--task", "runs_code", "--device", "cpu", "--cache-dir", str(tmp_path)]
    assert main(command) == 2
    refused = capsys.readouterr().err.splitlines()[-1]
    assert refused.startswith(f"mergebench: error: refusing to execute generated code: the kernel sandbox cannot start on "
                              f"this host ({NO_NAMESPACES})")
    with pytest.warns(UserWarning, match="generated code runs WITHOUT the kernel sandbox"):
        assert main([*command, "--unsandboxed-code"]) == 0
    assert "runs_code: pass@1 = 1.0000 ± 0.0000 (n=1, higher is better)" in capsys.readouterr().out


def test_eval_help_says_what_the_option_gives_up(capsys):
    from mergebench.cli import main

    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "WITHOUT isolation: it then sees this machine's files, network and processes" in text
