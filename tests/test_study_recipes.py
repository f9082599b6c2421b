"""The study's recipes on local copies of their hub datasets, and their errors when neither is there."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from mergebench import plugin_manager
from mergebench.errors import HubUnavailableError, UsageError
from mergebench_builtins.recipes.study import GLOBAL_BATCH, STUDY_RECIPES, parameter_count


def recipe(domain: str):
    spec = plugin_manager.registries().recipes.get(f"study-{domain}")
    return spec.load()(spec, SimpleNamespace(seed=0))


def write_rows(root, hub_id, rows, config="default", split="train"):
    folder = root / hub_id / config
    folder.mkdir(parents=True)
    (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_study_hub_experts_name_the_recipe_of_their_training_data():
    model = plugin_manager.registries().models.get("gemma-2-2b-it")
    math = model.expert("math")
    assert (math.hub_id, math.recipe) == ("MergeBench/gemma-2-2b-it_math", "study-math")
    assert set(STUDY_RECIPES) == {"instruction", "math", "multilingual", "coding", "safety"}


def test_samples_come_from_a_local_copy_under_the_data_root(tmp_path, monkeypatch):
    monkeypatch.setenv("MERGEBENCH_DATA_ROOT", str(tmp_path))
    write_rows(tmp_path, "hkust-nlp/dart-math-hard", [{"query": f"q{i}", "response": f"r{i}"} for i in range(10)])
    drawn = recipe("math").samples(3, seed=1)
    assert len(drawn) == 3 and all(d["completion"] == "r" + d["prompt"][1:] for d in drawn)
    assert recipe("math").samples(3, seed=1) == drawn


def test_filters_and_layouts_of_the_multilingual_and_safety_sets(tmp_path, monkeypatch):
    monkeypatch.setenv("MERGEBENCH_DATA_ROOT", str(tmp_path))
    write_rows(tmp_path, "CohereForAI/aya_dataset", [
        {"inputs": "Bonjour ?", "targets": "Salut.", "language": "French"},
        {"inputs": "Hello?", "targets": "Hi.", "language": "English"},
    ])
    assert recipe("multilingual").examples() == [{"prompt": "Bonjour ?", "completion": "Salut."}]
    write_rows(tmp_path, "allenai/wildguardmix", [{"prompt": "p1", "response": "no"}, {"prompt": "p2", "response": None}],
               config="wildguardtrain")
    write_rows(tmp_path, "allenai/wildjailbreak", [{"vanilla": "v", "adversarial": "", "completion": "c"}], config="train")
    assert recipe("safety").examples() == [{"prompt": "p1", "completion": "no"}, {"prompt": "v", "completion": "c"}]


def test_a_row_of_the_wrong_layout_names_the_row_and_its_columns(tmp_path, monkeypatch):
    monkeypatch.setenv("MERGEBENCH_DATA_ROOT", str(tmp_path))
    write_rows(tmp_path, "ise-uiuc/Magicoder-Evol-Instruct-110K", [{"instruction": "a", "response": "b"}, {"text": "x"}])
    with pytest.raises(UsageError, match=r"row 1 does not have the 'instruction_response' layout .*columns: \['text'\]"):
        recipe("coding").examples()


def test_an_unreachable_dataset_fails_before_training_with_both_ways_out(tmp_path, monkeypatch, tiny_llama):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MERGEBENCH_DATA_ROOT", str(tmp_path))
    with pytest.raises(HubUnavailableError) as info:
        recipe("instruction").train(tiny_llama, tmp_path / "out", seed=0, work_dir=tmp_path / "work")
    message = str(info.value)
    assert "allenai/tulu-3-sft-personas-instruction-following" in message
    assert f"{tmp_path}/allenai/tulu-3-sft-personas-instruction-following/default/train.jsonl" in message.replace("DIR", str(tmp_path))
    assert "MERGEBENCH_DATA_ROOT" in message and not (tmp_path / "out").exists()


def test_settings_follow_the_study_by_base_size(tiny_llama):
    from tests.helpers import load_tensors

    assert parameter_count(tiny_llama) == sum(t.numel() for t in load_tensors(tiny_llama).values())
    settings = recipe("coding").settings(tiny_llama)  # a small base: the 2B/3B settings
    assert (settings.learning_rate, settings.max_length, settings.epochs) == (1e-5, 4096, 2)
    assert settings.batch_size * settings.grad_accum == GLOBAL_BATCH


def test_full_suite_surrogates_are_sized_by_their_spec_and_read_ifeval_like_data_locally(tmp_path, monkeypatch):
    from mergebench.cache import ArtifactCache

    registries = plugin_manager.registries()
    context = SimpleNamespace(cache=ArtifactCache(tmp_path / "cache"), seed=0)
    lambada = registries.tasks.get("val_lambada")
    assert lambada.role == "validation" and lambada.load()(lambada, context).limit == 200
    assert registries.tasks.get("val_lambada_mini").load()(registries.tasks.get("val_lambada_mini"), context).limit == 48
    monkeypatch.setenv("MERGEBENCH_DATA_ROOT", str(tmp_path))
    write_rows(tmp_path, "argilla/ifeval-like-data", [
        {"key": 7, "prompt": "Say hi in lowercase.", "instruction_id_list": ["change_case:english_lowercase"],
         "kwargs": ['{"num_words": null}']},
    ], config="filtered")
    spec = registries.tasks.get("val_ifeval_like")
    (doc,) = spec.load()(spec, context).docs()
    assert doc == {"key": 7, "prompt": "Say hi in lowercase.", "instruction_id_list": ["change_case:english_lowercase"],
                   "kwargs": [{}]}


def test_math_on_a_large_base_runs_grpo_after_sft_on_boxed_answers(tmp_path, monkeypatch, tiny_llama):
    from mergebench.finetune import grpo
    from mergebench_builtins.recipes import study

    monkeypatch.setenv("MERGEBENCH_DATA_ROOT", str(tmp_path))
    write_rows(tmp_path, "hkust-nlp/dart-math-hard", [{"query": "1+1?", "response": "2"}])
    write_rows(tmp_path, "AI-MO/NuminaMath-TIR", [
        {"messages": [{"role": "user", "content": "p1"}, {"role": "assistant", "content": r"so \boxed{\frac{1}{2}}"}]},
        {"messages": [{"role": "user", "content": "p2"}, {"role": "assistant", "content": "no box"}]},
    ])
    calls = {}
    monkeypatch.setattr(grpo, "run_sft_then_grpo", lambda *args, **kwargs: calls.update(args=args, kwargs=kwargs) or {})
    monkeypatch.setattr(study, "LARGE_BASE_PARAMS", 0)  # the tiny model stands in for an 8B base
    recipe("math").train(tiny_llama, tmp_path / "out", seed=0, work_dir=tmp_path / "work")
    base, sft_examples, problems = calls["args"][:3]
    assert sft_examples == [{"prompt": "1+1?", "completion": "2"}]
    assert problems == [{"prompt": "p1", "answer": r"\frac{1}{2}"}]
    assert calls["kwargs"]["reward"] is grpo.boxed_answer_reward
    assert calls["args"][4].learning_rate == 5e-5  # the 8B/9B settings
