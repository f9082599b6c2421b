"""The decoding loop against transformers' own greedy ``generate``."""

from __future__ import annotations

import pytest
import torch

from mergebench.evaluation.api import GenerationRequest
from mergebench.evaluation.hf import HFLanguageModel

PROMPTS = ["abc", "The quick brown fox", "x", "0123456789 ninety", "hello there, general"]


def transformers_greedy(lm: HFLanguageModel, prompt: str, n: int) -> str:
    """One unpadded prompt through ``model.generate``: greedy, no EOS (the engines run to the budget)."""
    ids = lm.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    if lm.bos_first:
        ids = torch.cat([torch.tensor([[lm.tokenizer.bos_token_id]]), ids], dim=1)
    with torch.inference_mode():
        out = lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                                eos_token_id=None, pad_token_id=0)
    return lm.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


@pytest.fixture(scope="module", params=["tiny_llama", "tiny_gemma2"])
def lm(request):
    lm = HFLanguageModel.from_pretrained(request.getfixturevalue(request.param), batch_size=4, device="cpu")
    lm._eos_ids = lambda: set()  # random weights emit EOS at random; the reference above runs without one
    return lm


@pytest.mark.parametrize("budget", [12, 60])  # Gemma-2's window is 64: 60 new tokens pass it for the longer prompts
def test_batched_generation_equals_transformers_greedy_generate(lm, budget):
    ours = lm.generate([GenerationRequest(p, budget) for p in PROMPTS])
    assert ours == [transformers_greedy(lm, p, budget) for p in PROMPTS]


def test_rows_with_different_budgets_and_stops_leave_the_batch_with_the_same_tokens(lm):
    """A row that stops early drops its cache rows; the others continue as if it never was there."""
    full = transformers_greedy(lm, PROMPTS[1], 20)
    stop = next(ch for ch in full[1:] if ch.isascii() and ch.isprintable())
    requests = [GenerationRequest(PROMPTS[0], 3), GenerationRequest(PROMPTS[1], 20, (stop,)),
                GenerationRequest(PROMPTS[2], 20), GenerationRequest(PROMPTS[3], 7)]
    ours = lm.generate(requests)
    assert ours[1] == full[: full.index(stop)]
    assert [ours[0], ours[2], ours[3]] == [transformers_greedy(lm, PROMPTS[0], 3), transformers_greedy(lm, PROMPTS[2], 20),
                                           transformers_greedy(lm, PROMPTS[3], 7)]


@pytest.mark.slow
def test_the_embedded_model_generates_as_transformers_greedy_generate():
    from mergebench import plugin_manager
    from mergebench.cache import ArtifactCache
    from mergebench.pipeline import Pipeline, RunContext

    registries = plugin_manager.registries()
    path = Pipeline(RunContext(cache=ArtifactCache()), registries).base(registries.models.get("smollm2-135m-instruct")).path
    lm = HFLanguageModel.from_pretrained(path, batch_size=3, device="cpu")
    lm._eos_ids = lambda: set()
    prompts = ["Question: What is 12 times 7?\nAnswer:", "Write a haiku about the sea.", "def fibonacci(n):"]
    assert lm.generate([GenerationRequest(p, 48) for p in prompts]) == [transformers_greedy(lm, p, 48) for p in prompts]
