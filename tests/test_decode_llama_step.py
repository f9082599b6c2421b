"""The hand-written Llama decoding step against the model's own forward pass."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from mergebench.evaluation import llama_step
from mergebench.evaluation.decode import Batch, cache_argument
from mergebench.evaluation.hf import load_model
from mergebench.evaluation.lookup_decode import Drafter


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
    norm = llama.model.norm
    norm.forward = lambda x: torch.nn.functional.layer_norm(x, x.shape[-1:], norm.weight)
    try:
        assert not llama_step.supports(llama)  # a forward replaced on one module must run too
    finally:
        del norm.forward
    assert llama_step.supports(llama)


def test_the_step_gives_the_logits_of_the_models_forward_on_left_padded_rows(llama):
    prompts = [[5, 9, 13, 2, 7, 1], [3, 4], [8, 8, 8, 30]]
    batch = Batch.of(prompts, 4, pad=0, device="cpu")
    reference_cache = DynamicCache(config=llama.config)
    with torch.inference_mode():
        llama(input_ids=batch.ids, attention_mask=batch.mask[:, :batch.width], position_ids=batch.positions,
              use_cache=True, **{cache_argument(llama): reference_cache})
        step = llama_step.LlamaStep(llama, batch.capacity, rows=len(prompts))  # packed for these rows
        step.prefill(prompts, batch.width)  # the step's own cache (checked against the model's in the prefill test)
        mask, prompt = batch.mask.clone(), batch.mask[:, :batch.width].bool()
        positions = batch.positions[:, -1] + 1
        tokens = torch.tensor([11, 12, 40])
        for column in range(batch.width, batch.width + 3):
            mask[:, column] = 1
            expected = llama(input_ids=tokens[:, None], attention_mask=mask[:, :column + 1], position_ids=positions[:, None],
                             use_cache=True, **{cache_argument(llama): reference_cache}).logits[:, -1]
            lengths = torch.full((3,), column)
            ours = step(tokens[:, None], positions[:, None], lengths, prompt)[:, 0]
            torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
            tokens, positions = expected.argmax(-1), positions + 1


def test_several_tokens_in_one_step_give_the_logits_of_feeding_them_one_at_a_time(llama):
    """Rows at different lengths, each fed three tokens at once, against the model's forward on each row alone."""
    prompts = [[5, 9, 13, 2, 7, 1], [3, 4]]
    batch = Batch.of(prompts, 8, pad=0, device="cpu")
    with torch.inference_mode():
        step = llama_step.LlamaStep(llama, batch.capacity, rows=4)  # 2 rows x 3 tokens: past the packed rows
        step.prefill(prompts, batch.width)
        prompt = batch.mask[:, :batch.width].bool()
        lengths = torch.tensor([batch.width, batch.width])
        # row 0 feeds one token first, so the next step finds the rows at different lengths
        step(torch.tensor([[21], [22]]), batch.positions[:, -1:] + 1, lengths, prompt)
        lengths = lengths + torch.tensor([1, 0])  # row 1's token is discarded: it is fed again below
        fed = torch.tensor([[31, 32, 33], [22, 34, 35]])
        starts = torch.tensor([len(prompts[0]) + 1, len(prompts[1])])
        ours = step(fed, starts[:, None] + torch.arange(3), lengths, prompt)
        for row, history in enumerate([prompts[0] + [21], prompts[1]]):
            ids = torch.tensor([history + fed[row].tolist()])
            expected = llama(input_ids=ids).logits[0, -3:]
            torch.testing.assert_close(ours[row], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("prompts", [
    [[1, 2, 3, 5, 9, 13], [1, 2, 3, 4], [1, 2, 3, 8, 8, 8, 30]],  # a shared start of three tokens
    [[7, 2, 3], [7, 2, 3, 4, 5]],  # the first prompt is all shared start but its last token
    [[5, 9, 13, 2, 7, 1], [3, 4], [8, 8, 8, 30]],  # nothing shared
])
def test_the_prefill_gives_the_logits_and_cache_of_the_models_forward_on_left_padded_rows(llama, prompts):
    batch = Batch.of(prompts, 4, pad=0, device="cpu")
    cache = DynamicCache(config=llama.config)
    with torch.inference_mode():
        expected = llama(input_ids=batch.ids, attention_mask=batch.mask[:, :batch.width], position_ids=batch.positions,
                         use_cache=True, **{cache_argument(llama): cache}).logits[:, -1]
        step = llama_step.LlamaStep(llama, batch.capacity, rows=len(prompts))
        ours = step.prefill(prompts, batch.width)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    prompt = batch.mask[:, :batch.width].bool()
    for layer, keys, values in zip(cache.layers, step.keys, step.values):
        for row in range(len(prompts)):  # the prompt's columns; pad columns are never attended to
            torch.testing.assert_close(keys[row, :, :batch.width][:, prompt[row]], layer.keys[row][:, prompt[row]],
                                       rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(values[row, :, :batch.width][:, prompt[row]], layer.values[row][:, prompt[row]],
                                       rtol=1e-5, atol=1e-5)
        assert not keys[:, :, batch.width:].any()  # the budget's columns wait empty


def test_the_shared_start_leaves_every_prompt_a_token_of_its_own():
    assert llama_step.shared_start([[1, 2, 3, 5], [1, 2, 3, 4], [1, 2, 9]]) == 2
    assert llama_step.shared_start([[1, 2, 3], [1, 2, 3, 4]]) == 2
    assert llama_step.shared_start([[1, 2, 3]]) == 2
    assert llama_step.shared_start([[4, 2], [1, 2]]) == 0


def test_the_arranged_weights_are_kept_until_a_parameter_changes(tiny_llama):
    from mergebench.evaluation.api import GenerationRequest
    from mergebench.evaluation.hf import HFLanguageModel
    from tests.test_decode import PROMPTS, transformers_greedy

    lm = HFLanguageModel.from_pretrained(tiny_llama, batch_size=5)
    lm._eos_ids = lambda: set()
    first = llama_step.arranged_weights(lm.model, 5)
    assert llama_step.arranged_weights(lm.model, 3) is first  # fewer rows: the packing for 5 serves them
    assert llama_step.arranged_weights(lm.model, 6) is not first  # more rows: packed again
    kept = llama_step.arranged_weights(lm.model, 5)
    with torch.no_grad():
        lm.model.model.layers[1].mlp.up_proj.weight.mul_(-2.0)  # in place, as the search edits weights
    edited = llama_step.arranged_weights(lm.model, 5)
    assert edited is not kept
    up = lm.model.model.layers[1].mlp.up_proj.weight
    torch.testing.assert_close(edited.layers[1].gate_up.weight[up.shape[0]:], up, rtol=0, atol=0)
    assert lm.generate([GenerationRequest(p, 12) for p in PROMPTS]) == [transformers_greedy(lm, p, 12) for p in PROMPTS]


def test_a_drafter_guesses_what_followed_the_last_earlier_occurrence_of_its_final_ngram():
    drafter = Drafter([1, 2, 3, 4, 5, 9, 2, 3], guesses=2)
    assert drafter.draft() == [4, 5]  # "2 3" was followed by "4 5"
    drafter.append(7)
    assert drafter.draft() == []  # "3 7" and "2 3 7" never occurred before
    drafter = Drafter([1, 2, 3, 4, 2, 3, 8, 5, 2, 3], guesses=3)
    assert drafter.draft() == [8, 5, 2]  # no earlier "5 2 3"; of the two earlier "2 3" the latest counts
    drafter = Drafter([1, 2, 3, 4, 2, 3, 8, 1, 2, 3], guesses=3)
    assert drafter.draft() == [4, 2, 3]  # the longer n-gram "1 2 3" wins over the later "2 3"


def test_guessed_tokens_leave_the_greedy_output_unchanged(tiny_llama, monkeypatch):
    """Prompt-lookup guesses (off by default) checked against transformers' one-token greedy ``generate``."""
    from mergebench.evaluation import decode
    from mergebench.evaluation.api import GenerationRequest
    from mergebench.evaluation.hf import HFLanguageModel
    from tests.test_decode import PROMPTS, transformers_greedy

    lm = HFLanguageModel.from_pretrained(tiny_llama, batch_size=5)
    lm._eos_ids = lambda: set()
    calls = []
    real_step = llama_step.LlamaStep.__call__

    def counting(self, tokens, *args):
        calls.append(tokens.shape[1])
        return real_step(self, tokens, *args)

    monkeypatch.setattr(llama_step.LlamaStep, "__call__", counting)
    monkeypatch.setitem(decode.greedy_batch.__kwdefaults__, "guesses", 3)
    assert lm.generate([GenerationRequest(p, 40) for p in PROMPTS]) == [transformers_greedy(lm, p, 40) for p in PROMPTS]
    assert max(calls) > 1 and len(calls) < 39  # guesses were fed, and some held
