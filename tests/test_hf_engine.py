"""The Hugging Face backend against direct computations on the tiny model."""

from __future__ import annotations

import pytest
import torch

from mergebench.evaluation.api import (
    GenerationRequest,
    LoglikelihoodRequest,
    mean_stderr,
)
from mergebench.evaluation.hf import HFLanguageModel, cut_at_stop


@pytest.fixture(scope="module")
def lm(tiny_llama):
    return HFLanguageModel.from_pretrained(tiny_llama, batch_size=3, device="cpu")


def reference_logprob(lm, context: str, continuation: str) -> float:
    ids = lm.tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    n_context = len(lm.tokenizer(context, add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        logits = lm.model(torch.tensor([ids])).logits[0].float()
    logprobs = torch.log_softmax(logits, -1)
    return float(sum(logprobs[i - 1, ids[i]] for i in range(n_context, len(ids))))


def test_batched_left_padded_loglikelihood_equals_one_unpadded_forward(lm):
    pairs = [("Question: 2+2?\nAnswer:", " 4"), ("Hi", " there, how are you today?"), ("A much longer context string here", ".")]
    results = lm.loglikelihood([LoglikelihoodRequest(c, k) for c, k in pairs])
    for (context, continuation), result in zip(pairs, results):
        assert result.logprob == pytest.approx(reference_logprob(lm, context, continuation), abs=1e-4)
        assert result.n_tokens == len(continuation.encode())  # byte-level tokenizer: one token a byte


def test_trailing_context_spaces_move_to_the_continuation(lm):
    (a,) = lm.loglikelihood([LoglikelihoodRequest("Answer: ", "4")])
    (b,) = lm.loglikelihood([LoglikelihoodRequest("Answer:", " 4")])
    assert a.logprob == pytest.approx(b.logprob, abs=1e-5) and a.n_tokens == b.n_tokens == 2


def test_batched_generation_equals_one_at_a_time(lm):
    prompts = ["abc", "a much longer prompt than the others", "xy"]
    batched = lm.generate([GenerationRequest(p, max_new_tokens=6) for p in prompts])
    single = [lm.generate([GenerationRequest(p, max_new_tokens=6)])[0] for p in prompts]
    assert batched == single


def test_stop_strings_cut_the_output():
    assert cut_at_stop("The answer is 4.\n\nQuestion: next", ["Question:", "\n\n"]) == "The answer is 4."
    assert cut_at_stop("no stop here", ["###"]) == "no stop here"


def test_mean_and_standard_error_by_hand():
    mean, stderr = mean_stderr([1.0, 0.0, 1.0, 0.0])
    assert mean == 0.5
    assert stderr == pytest.approx((1 / 3) ** 0.5 / 2)  # sample variance 1/3, n = 4


def test_choices_sharing_a_context_score_as_separate_passes(lm, tiny_gemma2):
    context = "Question: which colour is the sky?\nAnswer:"
    choices = [" blue", " green and yellow", " red", " b"]
    results = lm.loglikelihood([LoglikelihoodRequest(context, c) for c in choices])
    for choice, result in zip(choices, results):
        assert result.logprob == pytest.approx(reference_logprob(lm, context, choice), abs=1e-4)
    gemma = HFLanguageModel.from_pretrained(tiny_gemma2, batch_size=2, device="cpu")  # soft-capped logits
    for choice, result in zip(choices, gemma.loglikelihood([LoglikelihoodRequest(context, c) for c in choices])):
        assert result.logprob == pytest.approx(reference_logprob(gemma, context, choice), abs=1e-4)


def test_a_request_whose_text_prefixes_another_is_read_off_its_pass(lm):
    story = "Passage: Tom has a red ball.\nQ: What colour is the ball?\nA:"
    first = LoglikelihoodRequest(story, " red")
    second = LoglikelihoodRequest(story + " red\nQ: Who has it?\nA:", " Tom")
    results = lm.loglikelihood([first, second])
    assert results[0].logprob == pytest.approx(reference_logprob(lm, first.context, first.continuation), abs=1e-4)
    assert results[1].logprob == pytest.approx(reference_logprob(lm, second.context, second.continuation), abs=1e-4)


def test_an_empty_context_is_conditioned_on_the_bos_token(lm):
    (result,) = lm.loglikelihood([LoglikelihoodRequest("", "hello world")])
    assert result.n_tokens == len("hello world")
    ids = [lm._prefix_token()] + lm.tokenizer("hello world", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logprobs = torch.log_softmax(lm.model(torch.tensor([ids])).logits[0].float(), -1)
    assert result.logprob == pytest.approx(float(sum(logprobs[i - 1, ids[i]] for i in range(1, len(ids)))), abs=1e-4)


def reference_greedy(lm, prompt: str, n: int) -> list[int]:
    ids = lm.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    out = lm.model.generate(ids, max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, ids.shape[1]:].tolist()


def test_generation_matches_transformers_greedy_and_stops_per_row(lm):
    tokens = reference_greedy(lm, "abc", 8)
    assert lm.generate([GenerationRequest("abc", max_new_tokens=8)]) == [lm.tokenizer.decode(tokens, skip_special_tokens=True)]
    text = lm.tokenizer.decode(tokens, skip_special_tokens=True)
    stop = next(ch for ch in text[1:] if ch.isascii() and ch.isprintable())
    short, full = lm.generate([GenerationRequest("abc", 8, (stop,)), GenerationRequest("abc", 8)])
    assert short == text[: text.index(stop)] and full == text


def test_a_row_listener_sees_each_batchs_rows_in_order_before_every_forward(lm):
    """Shared decoding tells rows apart by what the listener was told; rows leave as they reach their budget."""
    r = [GenerationRequest(f"prompt {i}", max_new_tokens=n) for i, n in enumerate([3, 1, 2, 4, 2])]
    seen: list[list[GenerationRequest]] = []
    texts = lm.generate(r, keep_order=True, batch_size=2, row_listener=seen.append)

    assert seen == [[r[0], r[1]], [r[0]], [r[0]],  # batches of two consecutive requests; the prefill, then each step
                    [r[2], r[3]], [r[2], r[3]], [r[3]], [r[3]],
                    [r[4]], [r[4]]]
    assert texts == lm.generate(r) and lm.batch_size == 3  # the listener and this call's batch size change nothing else
