"""The command line, as a user types it."""

from __future__ import annotations

import subprocess
import sys

import torch

from tests.helpers import load_tensors


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mergebench.cli", *args], capture_output=True, text=True, env=env)


def test_merge_writes_a_loadable_checkpoint(tiny_llama, tiny_experts, tmp_path):
    out = tmp_path / "merged"
    done = run("merge", "--method", "task_arithmetic", "--base", str(tiny_llama),
               "--expert", f"math={tiny_experts['math']}", "--expert", f"coding={tiny_experts['coding']}",
               "--param", "scaling=0.5", "--out", str(out), "--device", "cpu")
    assert done.returncode == 0, done.stderr
    assert "merged 2 experts with task_arithmetic {'scaling': 0.5}" in done.stdout
    base, math, coding = (load_tensors(p) for p in (tiny_llama, tiny_experts["math"], tiny_experts["coding"]))
    name = "model.layers.1.self_attn.q_proj.weight"
    expected = base[name] + 0.5 * ((math[name] - base[name]) + (coding[name] - base[name]))
    torch.testing.assert_close(load_tensors(out)[name], expected, rtol=0, atol=1e-6)
    assert {"config.json", "tokenizer.json", "model.safetensors", "README.md"} <= {p.name for p in out.iterdir()}
    assert not list(tmp_path.glob(".merged.tmp-*"))


def test_merge_errors_are_one_line_with_the_fix_and_leave_no_output(tiny_llama, tiny_experts, tiny_gemma2, tmp_path):
    out = tmp_path / "merged"
    done = run("merge", "--method", "ties_merging", "--base", str(tiny_llama), "--expert", f"math={tiny_experts['math']}", "--out", str(out))
    assert done.returncode == 2
    assert "mergebench: error: unknown method 'ties_merging'" in done.stderr and "Traceback" not in done.stderr
    done = run("merge", "--method", "soup", "--base", str(tiny_llama), "--expert", f"math={tiny_gemma2}", "--out", str(out), "--device", "cpu")
    assert done.returncode == 2 and "is a Gemma2ForCausalLM but the base is a LlamaForCausalLM" in done.stderr
    done = run("merge", "--method", "soup", "--base", str(tiny_llama), "--expert", "math", "--out", str(out))
    assert done.returncode == 2 and "--expert 'math' must look like KEY=VALUE" in done.stderr
    assert not out.exists() and not list(tmp_path.glob(".merged.tmp-*"))


def test_merge_refuses_to_overwrite_without_force(tiny_llama, tiny_experts, tmp_path):
    out = tmp_path / "merged"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    done = run("merge", "--method", "soup", "--base", str(tiny_llama), "--expert", f"math={tiny_experts['math']}", "--out", str(out))
    assert done.returncode == 2 and "pass --force" in done.stderr
    assert (out / "keep.txt").read_text() == "mine"


def test_eval_prints_score_and_stderr(tiny_llama, tmp_path):
    done = run("eval", "--model", str(tiny_llama), "--task", "toy_math", "--device", "cpu", "--cache-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "toy_math: bits_per_byte = " in done.stdout and "(n=3, lower is better)" in done.stdout


def test_plugins_lists_every_kind_with_its_provider():
    done = run("plugins")
    assert done.returncode == 0, done.stderr
    for needle in ("builtin-methods", "Merge methods", "task_arithmetic", "Tasks", "gsm8k_mini", "Models",
                   "smollm2-135m-instruct", "Finetuning recipes", "mini-math", "mergebench 0.1.0"):
        assert needle in done.stdout, needle


def test_finetune_builds_experts_the_mtl_model_and_a_named_recipe_once(tmp_path):
    cache = ["--cache-dir", str(tmp_path / "cache")]
    done = run("finetune", "--base", "tiny-llama", "--domain", "math", "--domain", "mtl", *cache)
    assert done.returncode == 0, done.stderr
    assert "math expert of tiny-llama:" in done.stdout and "mtl model of tiny-llama:" in done.stdout
    assert "[built] expert tiny-llama/math" in done.stderr + done.stdout
    again = run("finetune", "--base", "tiny-llama", "--domain", "math", *cache)
    assert "[built]" not in again.stderr + again.stdout, "a finished expert is never trained twice"
    named = run("finetune", "--base", "tiny-llama", "--domain", "coding", "--recipe", "synthetic-safety", *cache)
    assert named.returncode == 0 and "coding expert of tiny-llama:" in named.stdout
    both = run("finetune", "--base", "tiny-llama", "--recipe", "synthetic-math", *cache)
    assert both.returncode != 0 and "--recipe trains one expert: name its domain with --domain" in both.stderr
    typo = run("finetune", "--base", "tiny-llama", "--domain", "math", "--recipe", "synthetic-mth", *cache)
    assert typo.returncode != 0 and "did you mean 'synthetic-math'" in typo.stderr


def test_a_truncated_shard_is_one_line_from_eval_and_merge(tiny_llama, tiny_experts, tmp_path):
    """eval (transformers loads it), merge (mergebench's reader) and a data-aware merge (statistics load it)."""
    import json

    from tests.test_checkpoint import truncated_copy

    broken = truncated_copy(tiny_experts["math"], tmp_path / "broken")
    samples = tmp_path / "math.jsonl"
    samples.write_text(json.dumps({"prompt": "Add:", "completion": "2 + 2 = 4"}))
    merge = ["merge", "--base", str(tiny_llama), "--expert", f"math={broken}", "--device", "cpu",
             "--cache-dir", str(tmp_path / "cache")]
    for args in (["eval", "--model", str(broken), "--task", "toy_math", "--device", "cpu", "--cache-dir", str(tmp_path)],
                 [*merge, "--method", "task_arithmetic", "--out", str(tmp_path / "merged")],
                 [*merge, "--method", "fisher", "--samples", f"math={samples}", "--out", str(tmp_path / "merged")]):
        done = run(*args)
        assert done.returncode == 2, (args, done.stderr[-2000:])
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr[-2000:]
        assert f"mergebench: error: {broken / 'model.safetensors'} is not a readable safetensors file" in done.stderr
        assert "truncated or corrupt" in done.stderr and f"delete {broken}" in done.stderr
    assert not (tmp_path / "merged").exists() and not list(tmp_path.glob(".merged.tmp-*"))
