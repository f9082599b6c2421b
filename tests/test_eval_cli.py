"""``mergebench eval`` runs every task of the embedded suite and prints score ± stderr (tiny model)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from mergebench import plugin_manager


def embedded_tasks() -> list[str]:
    return [s.name for s in plugin_manager.registries().tasks.specs() if s.suites & {"mini", "mini-gen"}]


@pytest.mark.slow
def test_every_mini_task_evaluates_from_the_command_line(tiny_llama):
    names = embedded_tasks()
    args = [a for name in names for a in ("--task", name)]
    done = subprocess.run([sys.executable, "-m", "mergebench.cli", "eval", "--model", str(tiny_llama), *args,
                           "--limit", "1", "--device", "cpu"], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200"})  # one result a line
    assert done.returncode == 0, done.stderr[-3000:]
    for name in names:
        assert re.search(rf"^{name}: \S+ = \d+\.\d{{4}} ± \d+\.\d{{4}} \(n=\d+, (higher|lower) is better\)$",
                         done.stdout, re.MULTILINE), (name, done.stdout)


def test_a_chat_task_on_a_model_without_a_chat_template_is_a_one_line_error(tiny_llama, tmp_path):
    import json
    import shutil

    plain = tmp_path / "plain"
    shutil.copytree(tiny_llama, plain)
    config = json.loads((plain / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(config))
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    done = subprocess.run([sys.executable, "-m", "mergebench.cli", "eval", "--model", str(plain), "--task",
                           "harmbench_mini", "--device", "cpu"], capture_output=True, text=True)
    assert done.returncode == 2
    assert "task 'harmbench_mini' prompts with a chat template but model" in done.stderr
    assert "Traceback" not in done.stderr


def test_unknown_task_and_backend_suggest_the_name():
    done = subprocess.run([sys.executable, "-m", "mergebench.cli", "eval", "--model", "x", "--task", "mmlu_mni"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "unknown task 'mmlu_mni'; did you mean 'mmlu_mini'?" in done.stderr
    done = subprocess.run([sys.executable, "-m", "mergebench.cli", "eval", "--model", "x", "--task", "mmlu_mini",
                           "--backend", "vlm"], capture_output=True, text=True)
    assert done.returncode == 2 and "unknown evaluation backend 'vlm'; did you mean 'vllm'?" in done.stderr
