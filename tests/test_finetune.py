"""The finetuning machinery on the tiny random Llama: SFT (full and LoRA), resume, bad input, GRPO."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mergebench.errors import UsageError
from mergebench.finetune.sft import SFTSettings, run_sft
from tests.helpers import load_tensors

EXAMPLES = [{"prompt": f"What is {a} plus {b}?", "completion": f"{a} plus {b} is {a + b}. The answer is {a + b}."}
            for a in range(4) for b in range(4)]
FAST = SFTSettings(learning_rate=1e-3, max_steps=4, batch_size=4, max_length=128, warmup_ratio=0.0,
                   scheduler="constant", save_steps=100)


def _sft(base: Path, tmp: Path, settings: SFTSettings = FAST, name: str = "out", **kwargs) -> tuple[Path, dict]:
    out = tmp / name
    summary = run_sft(base, kwargs.pop("examples", EXAMPLES), out, settings, seed=kwargs.pop("seed", 0),
                      work_dir=kwargs.pop("work_dir", tmp / f"{name}-work"), description="test", **kwargs)
    return out, summary


def _assert_same_layout(base: dict, trained: dict) -> None:
    assert sorted(trained) == sorted(base)
    assert {k: tuple(v.shape) for k, v in trained.items()} == {k: tuple(v.shape) for k, v in base.items()}


def test_full_sft_writes_a_full_checkpoint_that_moved(tiny_llama, tmp_path):
    import torch

    out, summary = _sft(tiny_llama, tmp_path)
    base, trained = load_tensors(tiny_llama), load_tensors(out)
    _assert_same_layout(base, trained)
    assert summary["steps"] == 4 and summary["resumed_from"] is None
    assert summary["truncated_examples"] == 0 and summary["last_loss"] < summary["first_loss"]
    assert not torch.equal(base["model.layers.0.mlp.up_proj.weight"], trained["model.layers.0.mlp.up_proj.weight"])
    assert (out / "tokenizer_config.json").is_file() and (out / "training_summary.json").is_file()


@pytest.mark.parametrize("model", ["tiny_llama", "tiny_gemma2"])
def test_fast_loss_trains_exactly_like_trls_loss(model, request, tmp_path):
    """The completion-only LM-head loss is trl's loss: the same run ends with the same weights
    (Gemma-2 checks the final logit softcapping)."""
    import dataclasses

    import torch
    from transformers import TrainerCallback

    logged: dict[str, set] = {}

    def recorder(name):
        class Record(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                logged.setdefault(name, set()).update(logs or {})

        return Record()

    base = request.getfixturevalue(model)
    fast, _ = _sft(base, tmp_path, name="fast", callbacks=[recorder("fast")])
    slow, _ = _sft(base, tmp_path, dataclasses.replace(FAST, fast_loss=False), name="slow",
                   callbacks=[recorder("slow")])
    assert "entropy" in logged["slow"] and "entropy" not in logged["fast"]  # the fast path really ran
    a, b = load_tensors(fast), load_tensors(slow)
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=2e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("frozen", [False, True])
def test_activation_checkpointing_off_trains_the_same_weights_bit_for_bit(tiny_llama, tmp_path, frozen):
    """Off (the mini recipes), training keeps activations instead of recomputing them, and ends with
    exactly the weights of trl's default (checkpointing on), also with frozen embeddings; which is
    why the setting stays out of an expert's cache key."""
    import dataclasses

    import torch
    from transformers import TrainerCallback

    seen: dict[str, bool] = {}

    def recorder(name):
        class Record(TrainerCallback):
            def on_step_begin(self, args, state, control, model=None, **kwargs):
                seen[name] = (model.is_activation_checkpointing if hasattr(type(model), "is_activation_checkpointing")
                              else model.is_gradient_checkpointing)  # renamed in transformers 5

        return Record()

    settings = dataclasses.replace(FAST, freeze_embeddings=frozen)
    kept, _ = _sft(tiny_llama, tmp_path, dataclasses.replace(settings, activation_checkpointing=False), name="kept",
                   callbacks=[recorder("kept")])
    recomputed, _ = _sft(tiny_llama, tmp_path, settings, name="recomputed", callbacks=[recorder("recomputed")])
    assert seen == {"kept": False, "recomputed": True}
    a, b, base = load_tensors(kept), load_tensors(recomputed), load_tensors(tiny_llama)
    assert not torch.equal(a["model.layers.0.mlp.up_proj.weight"], base["model.layers.0.mlp.up_proj.weight"])
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_activation_checkpointing_is_left_out_of_the_key_and_other_settings_are_not():
    import dataclasses

    assert dataclasses.replace(FAST, activation_checkpointing=False).fingerprint() == FAST.fingerprint()
    assert dataclasses.replace(FAST, learning_rate=2e-3).fingerprint() != FAST.fingerprint()
    assert "activation_checkpointing" not in FAST.fingerprint() and FAST.as_dict()["activation_checkpointing"] is True


def test_lora_is_merged_into_dense_weights_of_the_targeted_modules_only(tiny_llama, tmp_path):
    import dataclasses

    import torch

    settings = dataclasses.replace(FAST, lora_rank=4, lora_targets=("q_proj", "v_proj"))
    out, summary = _sft(tiny_llama, tmp_path, settings)
    base, trained = load_tensors(tiny_llama), load_tensors(out)
    _assert_same_layout(base, trained)
    assert not any("lora" in name for name in trained)
    changed = {name for name in base if not torch.equal(base[name], trained[name])}
    targeted = {name for name in base if ".q_proj." in name or ".v_proj." in name}
    assert changed == targeted  # every adapter moved (B starts at zero, so a trained one is non-zero)
    assert summary["settings"]["lora_rank"] == 4


class _Kill(Exception):
    pass


def _killer(after_step: int):
    from transformers import TrainerCallback

    class Kill(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= after_step:
                raise _Kill(f"killed after step {state.global_step}")

    return Kill()


def test_killed_sft_resumes_from_its_last_checkpoint_and_ends_like_an_uninterrupted_run(tiny_llama, tmp_path):
    """Resuming restores model, optimizer, scheduler, RNG state and the data order (transformers skips
    the batches already seen in the epoch), so on the CPU the resumed run ends with the
    uninterrupted run's weights, up to float summation order."""
    import dataclasses

    import torch

    settings = dataclasses.replace(FAST, max_steps=6, save_steps=2)
    work = tmp_path / "work"
    with pytest.raises(_Kill):
        _sft(tiny_llama, tmp_path, settings, name="resumed", work_dir=work, callbacks=[_killer(3)])
    assert not (tmp_path / "resumed" / "training_summary.json").exists()
    _, summary = _sft(tiny_llama, tmp_path, settings, name="resumed", work_dir=work)
    assert summary["resumed_from"] == str(work / "checkpoint-2")
    reference, ref_summary = _sft(tiny_llama, tmp_path, settings, name="reference")
    assert summary["steps"] == ref_summary["steps"] == 6
    a, b = load_tensors(tmp_path / "resumed"), load_tensors(reference)
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-4, msg=name)


# -- batches of similar length ------------------------------------------------------------------------------------

VARIED = [{"prompt": f"Count to {n}.", "completion": " ".join(str(i) for i in range(1, n + 1))}
          for n in (3, 40, 7, 25, 1, 33, 12, 5, 48, 2, 19, 9, 30, 4, 15, 22)]


def test_length_grouped_order_keeps_every_example_once_and_groups_similar_lengths():
    from mergebench.finetune.batching import length_grouped_order, padded_tokens

    lengths = [5, 90, 12, 60, 7, 88, 30, 31, 64, 9, 11, 70]
    order = length_grouped_order(lengths, 4, seed=0)
    assert sorted(order) == list(range(12))
    batches = [sorted(lengths[i] for i in order[k:k + 4]) for k in range(0, 12, 4)]
    assert sorted(batches) == [[5, 7, 9, 11], [12, 30, 31, 60], [64, 70, 88, 90]]
    assert padded_tokens(lengths, order, 4) == 4 * (11 + 60 + 90)
    assert length_grouped_order(lengths, 4, seed=0) == order  # part of a resumable run: deterministic
    orders = {tuple(length_grouped_order(lengths, 4, seed=s)) for s in range(8)}
    assert len(orders) > 1, "the seed decides the order of the batches"
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        length_grouped_order(lengths, 0, seed=0)


def _batch_rows(callbacks_out: list):
    """A callback that records the real length of every row of every training batch."""
    from transformers import TrainerCallback

    class Rows(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            def hook(_module, _args, inputs):
                if inputs.get("attention_mask") is not None and _module.training:
                    callbacks_out.append(inputs["attention_mask"].sum(dim=1).tolist())
            model.model.register_forward_pre_hook(hook, with_kwargs=True)

    return Rows()


def test_length_batches_train_on_the_same_examples_with_less_padding(tiny_llama, tmp_path):
    import dataclasses

    from mergebench.finetune.batching import padded_tokens

    settings = dataclasses.replace(FAST, max_steps=-1, epochs=1, batch_size=4)
    grouped_rows: list = []
    random_rows: list = []
    _, summary = _sft(tiny_llama, tmp_path, dataclasses.replace(settings, length_batches=True), name="grouped",
                      examples=VARIED, callbacks=[_batch_rows(grouped_rows)])
    _sft(tiny_llama, tmp_path, settings, name="random", examples=VARIED, callbacks=[_batch_rows(random_rows)])
    assert summary["steps"] == 4 and len(grouped_rows) == len(random_rows) == 4
    lengths = sorted(n for rows in random_rows for n in rows)
    assert sorted(n for rows in grouped_rows for n in rows) == lengths, "every example once, either way"
    assert sorted(sorted(rows) for rows in grouped_rows) == [lengths[k:k + 4] for k in range(0, 16, 4)], \
        "each batch is a run of the length-sorted examples"
    grouped = sum(len(rows) * max(rows) for rows in grouped_rows)
    assert grouped == padded_tokens(lengths, list(range(16)), 4)
    assert grouped < sum(len(rows) * max(rows) for rows in random_rows)


def test_killed_length_batched_sft_resumes_on_the_batches_it_had_not_seen(tiny_llama, tmp_path):
    import dataclasses

    import torch

    settings = dataclasses.replace(FAST, max_steps=-1, epochs=1, batch_size=4, save_steps=2, length_batches=True)
    work = tmp_path / "work"
    with pytest.raises(_Kill):
        _sft(tiny_llama, tmp_path, settings, name="resumed", examples=VARIED, work_dir=work, callbacks=[_killer(3)])
    rows: list = []
    _, summary = _sft(tiny_llama, tmp_path, settings, name="resumed", examples=VARIED, work_dir=work,
                      callbacks=[_batch_rows(rows)])
    reference_rows: list = []
    reference, _ = _sft(tiny_llama, tmp_path, settings, name="reference", examples=VARIED,
                        callbacks=[_batch_rows(reference_rows)])
    assert summary["resumed_from"] == str(work / "checkpoint-2") and rows == reference_rows[2:]
    a, b = load_tensors(tmp_path / "resumed"), load_tensors(reference)
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-4, msg=name)


def test_the_cache_never_exposes_a_half_trained_expert(tiny_llama, cache, tmp_path):
    import dataclasses

    from mergebench.cache import ArtifactKey

    settings = dataclasses.replace(FAST, max_steps=4, save_steps=2)
    key = ArtifactKey.of("expert", {"test": "half-trained"})

    def build(callbacks):
        return lambda out: run_sft(tiny_llama, EXAMPLES, out, settings, seed=0, work_dir=cache.work_dir(key),
                                   description="test", callbacks=callbacks)

    with pytest.raises(_Kill):
        cache.get_or_build(key, build([_killer(3)]))
    assert cache.lookup(key) is None
    assert not cache.path(key).exists() and not list((cache.root / "tmp").iterdir())
    artifact = cache.get_or_build(key, build([]))
    summary = json.loads((artifact.path / "training_summary.json").read_text())
    assert summary["steps"] == 4 and summary["resumed_from"].endswith("checkpoint-2")
    assert not (cache.root / "work" / key.digest).exists()  # scratch removed once the expert exists


# -- bad input, rejected before training starts ---------------------------------------------------------------

@pytest.mark.parametrize(
    "examples, message",
    [
        ([], "no training examples"),
        ([EXAMPLES[0], {"prompt": "hi"}], "training example 1 has no 'completion'"),
        ([{"completion": "x"}], "training example 0 has no 'prompt'"),
        ([EXAMPLES[0], EXAMPLES[1], {"prompt": "hi", "completion": 3}], "training example 2 has a int 'completion', not a string"),
        (["just text"], "training example 0 is a str, not a dict"),
        ([EXAMPLES[0], {"prompt": "x" * 600, "completion": "y"}],
         "training example 1 is 6\\d\\d tokens with its chat template, more than the model's context of 512"),
    ],
)
def test_bad_examples_are_usage_errors_naming_the_example(tiny_llama, tmp_path, examples, message):
    with pytest.raises(UsageError, match=message):
        _sft(tiny_llama, tmp_path, examples=examples)
    assert not (tmp_path / "out-work").exists() or not list((tmp_path / "out-work").iterdir())


def test_a_base_without_chat_template_is_a_usage_error(tiny_llama, tmp_path):
    import shutil

    base = tmp_path / "base"
    shutil.copytree(tiny_llama, base)
    config = json.loads((base / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (base / "tokenizer_config.json").write_text(json.dumps(config))
    (base / "chat_template.jinja").unlink(missing_ok=True)
    with pytest.raises(UsageError, match="has no chat template.*add one to its tokenizer_config.json"):
        _sft(base, tmp_path)


# -- GRPO ------------------------------------------------------------------------------------------------------

def test_final_number_reward_is_exact_match_of_the_final_number():
    from mergebench.finetune.grpo import final_number_reward

    completions = [
        "3 plus 4 is 7. The answer is 7.",          # right
        "The answer is 7.0",                          # same number, normalized
        "First 12, then 3, so 7",                      # last number counts
        "The answer is 8. (not 7)",                   # the number after the last "answer is"
        "I don't know",                               # no number
        [{"role": "assistant", "content": "So the answer is 1,000."}],  # chat-format completion
        "The answer is 1000",
    ]
    gold = ["7", "7", "7", "7", "7", "1000", "1,000"]
    assert final_number_reward(completions, gold) == [1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0]


GRPO_ITEMS = [{"prompt": f"What is {a} plus {b}?", "answer": str(a + b)} for a in range(2) for b in range(2)]


def _tiny_grpo():
    from mergebench.finetune.grpo import GRPOSettings

    return GRPOSettings(learning_rate=1e-3, max_steps=2, batch_size=4, num_generations=2, max_completion_length=6,
                        save_steps=1)


def test_two_grpo_steps_on_the_tiny_llama_write_a_full_checkpoint(tiny_llama, tmp_path):
    from mergebench.finetune.grpo import run_grpo

    seen: list[list[float]] = []

    def reward(completions, answer, **kwargs):
        assert len(completions) == 4 and len(answer) == 4  # 2 prompts x 2 generations per step
        seen.append([float(len(c[0]["content"])) for c in completions])  # a reward that varies within a group
        return seen[-1]

    summary = run_grpo(tiny_llama, GRPO_ITEMS, tmp_path / "out", _tiny_grpo(), seed=0, work_dir=tmp_path / "work",
                       description="test", reward=reward)
    assert summary["steps"] == 2 and len(seen) == 2
    base, trained = load_tensors(tiny_llama), load_tensors(tmp_path / "out")
    _assert_same_layout(base, trained)


def test_grpo_rejects_bad_items_and_batch_sizes(tiny_llama, tmp_path):
    import dataclasses

    from mergebench.finetune.grpo import run_grpo

    with pytest.raises(UsageError, match="no GRPO prompts"):
        run_grpo(tiny_llama, [], tmp_path / "o", _tiny_grpo(), seed=0, work_dir=tmp_path / "w", description="t")
    with pytest.raises(UsageError, match="GRPO item 1 must be a dict with a string 'prompt' and an 'answer'"):
        run_grpo(tiny_llama, [GRPO_ITEMS[0], {"prompt": "x"}], tmp_path / "o", _tiny_grpo(), seed=0,
                 work_dir=tmp_path / "w", description="t")
    with pytest.raises(UsageError, match="must be a multiple of num_generations"):
        run_grpo(tiny_llama, GRPO_ITEMS, tmp_path / "o", dataclasses.replace(_tiny_grpo(), batch_size=3), seed=0,
                 work_dir=tmp_path / "w", description="t")


def test_sft_then_grpo_resumes_each_stage(tiny_llama, tmp_path):
    """Killed during GRPO, the recipe reuses the finished SFT model and resumes GRPO from its checkpoint."""
    import dataclasses

    from mergebench.finetune.grpo import run_sft_then_grpo

    work = tmp_path / "work"
    sft = dataclasses.replace(FAST, max_steps=2)

    def run(callbacks=()):
        return run_sft_then_grpo(tiny_llama, EXAMPLES, GRPO_ITEMS, tmp_path / "out", sft, _tiny_grpo(), seed=0,
                                 work_dir=work, description="test", callbacks=callbacks)

    with pytest.raises(_Kill):
        run([_KillInGRPO()])
    assert (work / "sft-model" / "training_summary.json").is_file()
    summary = run()
    assert summary["sft"]["reused"] is True
    assert summary["grpo"]["resumed_from"] == str(work / "grpo" / "checkpoint-1")
    assert summary["grpo"]["steps"] == 2
    _assert_same_layout(load_tensors(tiny_llama), load_tensors(tmp_path / "out"))


def _KillInGRPO():
    from transformers import TrainerCallback

    class Kill(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if Path(args.output_dir).name == "grpo" and state.global_step >= 2:  # before step 2 is saved
                raise _Kill("killed in GRPO at step 2")

    return Kill()


def test_boxed_answer_reward_matches_the_last_box_with_balanced_braces():
    from mergebench.evaluation.answers import boxed
    from mergebench.finetune.grpo import boxed_answer_reward

    assert boxed(r"so \boxed{1} then \boxed{\frac{63}{400}}.") == r"\frac{63}{400}"
    assert boxed(r"\boxed{x + 1") is None and boxed("no box") is None
    completions = [r"The answer is $\boxed{\frac{63}{400}}$", r"\boxed{ \frac{63} {400} }", r"\boxed{0.1575}", "63/400"]
    assert boxed_answer_reward(completions, [r"\frac{63}{400}"] * 4) == [1.0, 1.0, 0.0, 0.0]
