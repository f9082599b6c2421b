"""The hand-written Llama decoding step against the model's own forward pass."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from mergebench.evaluation import llama_step
from mergebench.evaluation.decode import Batch, cache_argument
from mergebench.evaluation.hf import load_model


@pytest.fixture(scope="module")
def llama(tiny_llama):
    return load_model(tiny_llama)[0]


def test_only_plain_llama_models_without_hooks_take_the_hand_written_step(llama, tiny_gemma2):
    assert llama_step.supports(llama)
    assert not llama_step.supports(load_model(tiny_gemma2)[0])
    handle = llama.model.layers[0].mlp.register_forward_hook(lambda *args: None)
    try:
        assert not llama_step.supports(llama)  # the search's per-row deltas are hooks: they must run
    finally:
        handle.remove()
    assert llama_step.supports(llama)


def test_the_step_gives_the_logits_of_the_models_forward_on_left_padded_rows(llama):
    prompts = [[5, 9, 13, 2, 7, 1], [3, 4], [8, 8, 8, 30]]
    batch = Batch.of(prompts, 4, pad=0, device="cpu")
    reference_cache, cache = DynamicCache(config=llama.config), DynamicCache(config=llama.config)
    with torch.inference_mode():
        for c in (reference_cache, cache):
            llama(input_ids=batch.ids, attention_mask=batch.mask[:, :batch.width], position_ids=batch.positions,
                  use_cache=True, **{cache_argument(llama): c})
        step = llama_step.LlamaStep(llama, batch.capacity)
        step.take_cache(cache, len(prompts), batch.width)
        mask, allowed = batch.mask.clone(), batch.mask.bool()
        positions = batch.positions[:, -1] + 1
        tokens = torch.tensor([11, 12, 40])
        for column in range(batch.width, batch.width + 3):
            mask[:, column], allowed[:, column] = 1, True
            expected = llama(input_ids=tokens[:, None], attention_mask=mask[:, :column + 1], position_ids=positions[:, None],
                             use_cache=True, **{cache_argument(llama): reference_cache}).logits[:, -1]
            ours = step(tokens, positions, column, allowed)
            torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
            tokens, positions = expected.argmax(-1), positions + 1
