"""The decode step's weight products (MKL-packed or numpy's BLAS) against ``F.linear``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mergebench.evaluation.packed_linear import PackedMatrix, can_pack, packed_allocation


@pytest.fixture
def weight():
    return torch.randn(48, 20, generator=torch.Generator().manual_seed(0))


@pytest.mark.skipif(not can_pack(torch.zeros(2, 2)), reason="this torch has no MKL packed sgemm")
@pytest.mark.parametrize("rows", [1, 3, 4, 5, 9])
def test_a_packed_product_is_linear_for_fewer_as_many_and_more_rows_than_packed(weight, rows):
    matrix = PackedMatrix(weight, 4)
    assert matrix.packed is not None and matrix.packed_bytes > 0
    x = torch.randn(rows, 2, 20, generator=torch.Generator().manual_seed(rows))  # leading dims are kept
    out = matrix(x)
    assert out.shape == (rows, 2, 48)
    torch.testing.assert_close(out, F.linear(x, weight), rtol=1e-5, atol=1e-5)


def test_weights_mkl_cannot_pack_are_multiplied_by_linear_itself(weight):
    bf16 = weight.to(torch.bfloat16)
    assert not can_pack(bf16)
    matrix = PackedMatrix(bf16, 4)
    assert matrix.packed is None and matrix.packed_bytes == 0
    x = torch.randn(3, 20).to(torch.bfloat16)
    assert torch.equal(matrix(x), F.linear(x, bf16))
    unpacked = PackedMatrix(weight, 4, pack=False)
    assert unpacked.packed is None
    x = torch.randn(3, 20)
    assert torch.equal(unpacked(x), F.linear(x, weight))


@pytest.mark.skipif(not can_pack(torch.zeros(2, 2)), reason="this torch has no MKL packed sgemm")
def test_the_allocation_bound_covers_what_packing_allocates():
    for shape in [(48, 20), (192, 576), (960, 576), (576, 1536), (3072, 576), (49152, 576)]:
        weight = torch.zeros(shape)
        assert PackedMatrix(weight, 16).packed_bytes <= packed_allocation([weight])


def test_a_model_over_the_packing_limit_decodes_unpacked_with_the_same_tokens(tiny_llama, monkeypatch):
    from mergebench.evaluation import llama_step, packed_linear
    from mergebench.evaluation.api import GenerationRequest
    from mergebench.evaluation.hf import HFLanguageModel
    from tests.test_decode import PROMPTS, transformers_greedy

    lm = HFLanguageModel.from_pretrained(tiny_llama, batch_size=5)
    lm._eos_ids = lambda: set()
    monkeypatch.setattr(packed_linear, "PACK_LIMIT_BYTES", 0)
    weights = llama_step.arranged_weights(lm.model, 5)
    assert all(m.packed is None for layer in weights.layers for m in (layer.qkv, layer.o, layer.gate_up, layer.down))
    assert weights.lm_head.packed is None
    assert lm.generate([GenerationRequest(p, 12) for p in PROMPTS]) == [transformers_greedy(lm, p, 12) for p in PROMPTS]


@pytest.mark.parametrize("rows", [1, 4, 9])
def test_a_numpy_product_is_linear_at_any_row_count(weight, rows):
    matrix = PackedMatrix(weight, 4, library="numpy")
    assert matrix.packed is None and matrix.transposed.shape == (20, 48)
    assert matrix.packed_bytes == 48 * 20 * 4
    x = torch.randn(rows, 2, 20, generator=torch.Generator().manual_seed(rows))
    out = matrix(x)
    assert out.shape == (rows, 2, 48) and out.dtype == torch.float32
    reference = (x.double() @ weight.double().T).float()
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)


def test_numpy_is_used_for_float32_on_the_cpu_only(weight):
    matrix = PackedMatrix(weight.to(torch.bfloat16), 4, library="numpy")
    assert matrix.transposed is None and matrix.packed is None
    x = torch.randn(3, 20).to(torch.bfloat16)
    assert torch.equal(matrix(x), F.linear(x, weight.to(torch.bfloat16)))
    assert PackedMatrix(weight, 4, pack=False, library="numpy").transposed is None


def test_the_blas_follows_the_vendor_unless_the_variable_names_one(monkeypatch):
    from mergebench.errors import UsageError
    from mergebench.evaluation import packed_linear

    monkeypatch.delenv(packed_linear.BLAS_VARIABLE, raising=False)
    monkeypatch.setattr(packed_linear, "cpu_vendor", lambda: "GenuineIntel")
    assert packed_linear.blas() == "mkl"
    monkeypatch.setattr(packed_linear, "cpu_vendor", lambda: "AuthenticAMD")
    assert packed_linear.blas() == "numpy"
    monkeypatch.setenv(packed_linear.BLAS_VARIABLE, "MKL")
    assert packed_linear.blas() == "mkl"
    monkeypatch.setenv(packed_linear.BLAS_VARIABLE, "openblas")
    with pytest.raises(UsageError, match=r"MERGEBENCH_DECODE_BLAS='openblas' is not a choice; set it to one of auto, mkl, numpy"):
        packed_linear.blas()


@pytest.mark.parametrize("library", ["mkl", "numpy"])
def test_both_libraries_decode_the_tokens_of_generate(tiny_llama, monkeypatch, library):
    from mergebench.evaluation import llama_step, packed_linear
    from mergebench.evaluation.api import GenerationRequest
    from mergebench.evaluation.hf import HFLanguageModel
    from tests.test_decode import PROMPTS, transformers_greedy

    monkeypatch.setenv(packed_linear.BLAS_VARIABLE, library)
    lm = HFLanguageModel.from_pretrained(tiny_llama, batch_size=5)
    lm._eos_ids = lambda: set()
    assert lm.generate([GenerationRequest(p, 12) for p in PROMPTS]) == [transformers_greedy(lm, p, 12) for p in PROMPTS]
    weights = llama_step.arranged_weights(lm.model, 5)
    assert weights.library == library
    assert (weights.lm_head.transposed is not None) == (library == "numpy")


def test_numpy_blas_follows_every_change_of_the_thread_count(monkeypatch):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from mergebench.evaluation import packed_linear

    def blas_counts() -> set[int]:
        return {pool["num_threads"] for pool in threadpoolctl.threadpool_info() if pool["user_api"] == "blas"}

    if not blas_counts():
        pytest.skip("numpy loaded no BLAS threadpoolctl can see")
    restore = threadpoolctl.threadpool_limits(limits=None, user_api="blas")  # the counts to put back
    monkeypatch.setattr(packed_linear, "_blas_threads_set", None)
    try:
        for threads in (1, 2, 1):  # back to a count asked for before: applied again
            packed_linear.blas_threads(threads)
            assert blas_counts() == {threads}
    finally:
        restore.restore_original_limits()


@pytest.mark.parametrize("library", ["mkl", "numpy"])
def test_log_likelihood_products_go_through_the_chosen_blas_and_the_modules_come_back(monkeypatch, library):
    from mergebench.evaluation import packed_linear

    monkeypatch.setenv(packed_linear.BLAS_VARIABLE, library)
    generator = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 48), torch.nn.ReLU(), torch.nn.Linear(48, 7, bias=False))
    x = torch.randn(3, 5, 20, generator=generator)
    expected = model[2](torch.relu(F.linear(x, model[0].weight, model[0].bias)))
    with torch.inference_mode(), packed_linear.numpy_linears(model) as patched:
        out = model(x)
    assert len(patched.patched) == 0  # emptied on the way out
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert all("forward" not in vars(m) for m in model.modules())  # torch's own forward again
    x.requires_grad_(True)
    reference = model[2](torch.relu(F.linear(x, model[0].weight, model[0].bias))).square().sum()
    expected_grads = torch.autograd.grad(reference, [x, model[0].weight, model[0].bias, model[2].weight])
    with packed_linear.numpy_linears(model):
        assert ("forward" in vars(model[0])) == (library == "numpy")
        loss = model(x).square().sum()  # autograd on (training): input and weight gradients from the same BLAS
        grads = torch.autograd.grad(loss, [x, model[0].weight, model[0].bias, model[2].weight])
    for got, want in zip(grads, expected_grads):
        if library == "mkl":
            assert torch.equal(got, want)  # untouched: torch's own products
        else:
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
