"""Log-likelihood forwards attend one packed row at a time: what the masked pass gives, on each row's own columns."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from mergebench.evaluation import packing, row_attention
from mergebench.evaluation.api import LoglikelihoodRequest
from mergebench.evaluation.hf import HFLanguageModel


@pytest.fixture(scope="module")
def lm(tiny_llama):
    return HFLanguageModel.from_pretrained(tiny_llama, batch_size=3, device="cpu")


@pytest.fixture
def query_lengths(monkeypatch) -> list[int]:
    """The query length of every scaled-dot-product-attention call from here on."""
    seen: list[int] = []
    original = F.scaled_dot_product_attention

    def spy(query, *args, **kwargs):
        seen.append(query.shape[-2])
        return original(query, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    return seen


def causal(n: int) -> torch.Tensor:
    return torch.ones(n, n, dtype=torch.bool).tril()


def test_each_row_gets_what_the_masked_pass_gives_it(query_lengths):
    torch.manual_seed(0)
    width, scaling = 12, 0.35
    query, key, value = torch.randn(2, 4, width, 8), torch.randn(2, 2, width, 8), torch.randn(2, 2, width, 8)
    allowed = torch.zeros(2, 1, width, width, dtype=torch.bool)
    allowed[0, 0, :4, :4] = causal(4)  # sequence 0: a 4-token trunk, then a 3-token trunk with two 2-token branches
    allowed[0, 0, 4:7, 4:7] = causal(3)
    for begin in (7, 9):
        allowed[0, 0, begin:begin + 2, 4:7] = True
        allowed[0, 0, begin:begin + 2, begin:begin + 2] = causal(2)
    allowed[1, 0, :9, :9] = causal(9)  # sequence 1: one 9-token trunk
    for i, column in ((0, 11), (1, 9), (1, 10), (1, 11)):  # padding attends to itself only
        allowed[i, 0, column, column] = True
    bias = torch.zeros(allowed.shape).masked_fill_(~allowed, torch.finfo(torch.float32).min)
    expected = F.scaled_dot_product_attention(query, key.repeat_interleave(2, 1), value.repeat_interleave(2, 1),
                                              attn_mask=bias, scale=scaling).transpose(1, 2)
    query_lengths.clear()
    model = SimpleNamespace(config=SimpleNamespace(_attn_implementation="sdpa"))
    with row_attention.rows(model, [[(0, 4, True), (4, 7, False)], [(0, 9, True)]]) as used:
        out, weights = row_attention.attention(None, query, key, value, bias, scaling=scaling)
    assert used and weights is None and out.shape == (2, width, 4, 8)
    assert query_lengths == [4, 7, 9]  # the rows' own lengths, never the sequence's 12 columns
    torch.testing.assert_close(out[0, :11], expected[0, :11], rtol=0, atol=1e-6)
    torch.testing.assert_close(out[1, :9], expected[1, :9], rtol=0, atol=1e-6)


def test_a_packed_forward_attends_over_the_rows_lengths_only(lm, query_lengths):
    requests = [LoglikelihoodRequest("Question: 2+2?\nAnswer:", " 4"), LoglikelihoodRequest("Hi", " there, how are you?"),
                LoglikelihoodRequest("Which colour is the sky?", " blue"), LoglikelihoodRequest("Which colour is the sky?", " red")]
    rows = packing.plan([lm._encode_pair(r) for r in requests])
    assert len(packing.bins(rows, lm.sequence_tokens)) == 1  # one sequence holds all three rows
    query_lengths.clear()
    lm.loglikelihood(requests)
    layers = lm.model.config.num_hidden_layers
    assert sorted(query_lengths) == sorted([row.length for row in rows] * layers)
    assert lm.model.config._attn_implementation == "sdpa"


def test_the_models_own_attention_comes_back_after_an_error(lm):
    with pytest.raises(RuntimeError, match="inside"):
        with row_attention.rows(lm.model, [[(0, 3, True)]]) as used:
            assert used and lm.model.config._attn_implementation == row_attention.NAME
            raise RuntimeError("inside")
    assert lm.model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("config", [SimpleNamespace(_attn_implementation="eager"),
                                    SimpleNamespace(_attn_implementation="sdpa", sub_configs={"vision_config": None})],
                         ids=["eager", "sub-configs"])
def test_models_that_do_not_attend_through_sdpa_alone_are_left_alone(config):
    own = config._attn_implementation
    with row_attention.rows(SimpleNamespace(config=config), [[(0, 3, True)]]) as used:
        assert not used and config._attn_implementation == own


def test_soft_capped_attention_falls_back_to_the_masked_pass(query_lengths):
    torch.manual_seed(1)
    query, key, value = torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8)
    bias = torch.zeros(1, 1, 6, 6).masked_fill_(~causal(6), torch.finfo(torch.float32).min)
    model = SimpleNamespace(config=SimpleNamespace(_attn_implementation="sdpa"))
    with row_attention.rows(model, [[(0, 3, True), (3, 3, True)]]):
        with pytest.raises(ValueError, match="softcap"):  # what transformers' own sdpa says of it
            row_attention.attention(SimpleNamespace(), query, key, value, bias, scaling=0.35, softcap=30.0)
    assert query_lengths == []


def test_off_the_cpu_the_masked_pass_stays(query_lengths):
    query, key, value = (torch.empty(1, 2, 6, 8, device="meta") for _ in range(3))
    bias = torch.empty(1, 1, 6, 6, device="meta")
    model = SimpleNamespace(config=SimpleNamespace(_attn_implementation="sdpa"))
    with row_attention.rows(model, [[(0, 3, True), (3, 3, True)]]):
        out, _ = row_attention.attention(SimpleNamespace(), query, key, value, bias, scaling=0.35)
    assert query_lengths == [6] and out.shape == (1, 6, 2, 8)  # one call over the whole sequence
