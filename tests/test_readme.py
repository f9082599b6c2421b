"""The README's set-up commands and CI stay in step."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    block = re.search(r"## Quick start.*?```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S).group(1)
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def test_readme_has_exactly_two_setup_commands_main_job_and_tests():
    main_job, tests = readme_commands()
    assert re.search(r"\.venv/bin/pytest benchmarks( --mb-executor processes)?$", main_job), main_job
    assert tests.endswith("pytest tests")


def test_cold_run_times_the_readme_main_command_as_written():
    import sys

    sys.path.insert(0, str(REPO / "benchmarks" / "perf"))
    try:
        from cold_run import main_command
    finally:
        sys.path.pop(0)
    main_job, _ = readme_commands()
    steps = main_command(REPO)
    assert " && ".join(" ".join(step) for step in steps) == main_job
    assert steps[-1][:2] == [".venv/bin/pytest", "benchmarks"]


def test_ci_runs_the_readme_test_command_verbatim():
    _, tests = readme_commands()
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert tests in ci
