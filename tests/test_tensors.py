"""The shared merge arithmetic: one ``base + λ·Δ`` in every form, sums that leave their inputs alone."""

from __future__ import annotations

import pytest
import torch

from mergebench.merging.tensors import averaged, scaled_sum, summed, task_vectors


@pytest.fixture
def pair():
    generator = torch.Generator().manual_seed(0)
    return torch.randn(64, 32, generator=generator), torch.randn(64, 32, generator=generator) * 1e-3


@pytest.mark.parametrize("scaling", [1, 1.0, 0.3, 0.7])
def test_scaled_sum_gives_the_same_bits_returned_into_a_buffer_or_in_place(pair, scaling):
    base, delta = pair
    expected = base + delta if scaling == 1 else base + torch.tensor(scaling, dtype=torch.float32) * delta
    returned = scaled_sum(base, delta, scaling)
    buffer = scaled_sum(base, delta, scaling, out=torch.empty_like(base))
    own = delta.clone()
    scaled_sum(base, own, scaling, out=own)
    for got in (returned, buffer, own):
        assert torch.equal(got, expected)


@pytest.mark.parametrize("scaling", [0.1, 0.3, 0.7, 1.7, -0.9])
def test_scaled_sum_rounds_the_product_before_the_sum_on_a_million_entries(scaling):
    """The one-pass form against numpy's two rounded steps: a fused multiply-add would differ in ~0.2% of entries."""
    import numpy as np

    generator = torch.Generator().manual_seed(1)
    base, delta = torch.randn(1 << 20, generator=generator), torch.randn(1 << 20, generator=generator) * 1e-3
    product = np.float32(scaling) * delta.numpy()  # rounded to float32
    expected = torch.from_numpy(product + base.numpy())  # rounded again
    fused = torch.from_numpy((np.float64(np.float32(scaling)) * delta.numpy().astype(np.float64)
                              + base.numpy().astype(np.float64)).astype(np.float32))  # one rounding
    assert not torch.equal(fused, expected)  # the data tells the two roundings apart
    assert torch.equal(scaled_sum(base, delta, scaling), expected)
    assert torch.equal(scaled_sum(base, delta, scaling, out=torch.empty_like(base)), expected)
    own = delta.clone()
    assert torch.equal(scaled_sum(base, own, scaling, out=own), expected) and torch.equal(own, expected)


def test_scaled_sum_of_bfloat16_rounds_each_step_in_bfloat16(pair):
    base, delta = (t.to(torch.bfloat16) for t in pair)
    assert torch.equal(scaled_sum(base, delta, 0.3), base + 0.3 * delta)


def test_scaled_sum_with_one_scale_per_row_equals_each_row_scaled_alone(pair):
    base, delta = pair
    vector_base, vector_delta = base[0], delta[0]
    scales = torch.tensor([0.1, 0.5, 1.0])
    rows = scaled_sum(vector_base, vector_delta, scales.view(-1, 1))
    for row, scale in zip(rows, scales.tolist()):
        assert torch.equal(row, scaled_sum(vector_base, vector_delta, scale))


def test_summed_and_averaged_leave_their_inputs_unchanged_unless_owned(pair):
    a, b = pair
    a0, b0 = a.clone(), b.clone()
    assert torch.equal(summed([a, b]), a0 + b0) and torch.equal(a, a0) and torch.equal(b, b0)
    assert torch.equal(averaged([a, b]), (a0 + b0) / 2) and torch.equal(a, a0)
    owned = a.clone()
    total = summed([owned, b], owned=True)
    assert total is owned and torch.equal(owned, a0 + b0)
    assert torch.equal(averaged(iter([a, b, a])), (a0 + b0 + a0) / 3)  # a generator: counted as it goes
    with pytest.raises(ValueError):
        summed([])


def test_task_vectors_use_the_lazy_sequences_own_reader_when_it_has_one(pair):
    base, delta = pair

    class Lazy(list):
        def task_vector(self, index):
            return torch.full_like(base, float(index))

    assert [float(t[0, 0]) for t in task_vectors(Lazy([base + delta, base]), base)] == [0.0, 1.0]
    assert torch.equal(next(task_vectors([base + delta], base)), (base + delta) - base)


def _bits(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous().view(torch.int32)


@pytest.mark.parametrize("zero_sign", [1.0, -1.0])  # the sign elected where the sum is 0 (+, or a majority's −)
@pytest.mark.parametrize("normalize", [True, False])
def test_disjoint_merge_equals_the_masked_ties_sum_bit_for_bit(normalize, zero_sign):
    from mergebench.merging.tensors import disjoint_merge, elected_sign

    generator = torch.Generator().manual_seed(0)
    deltas = [torch.randn(4096, generator=generator) for _ in range(5)]
    for i, delta in enumerate(deltas):  # trimmed entries (+0), a few −0 and exact cancellations
        delta[torch.rand(4096, generator=generator) < 0.6] = 0.0
        delta[i::97] = -0.0
    deltas[1][:50], deltas[2][:50] = 1.5, -1.5
    total = torch.zeros(4096)
    for delta in deltas:
        total.add_(delta)
    reference_sign = torch.where(total >= 0, 1.0, -1.0)  # the former election
    assert torch.equal(elected_sign(total), reference_sign)
    reference_sign[total == 0] = zero_sign
    kept, count = torch.zeros(4096), torch.zeros(4096, dtype=torch.uint8)
    for delta in deltas:  # the former masked disjoint sum
        agrees = torch.sign(delta) == reference_sign
        kept.add_(delta * agrees)
        count.add_(agrees)
    expected = kept.div_(count.clamp_(min=1)) if normalize else kept
    found = disjoint_merge([d.clone() for d in deltas], reference_sign, normalize=normalize)
    assert torch.equal(_bits(found), _bits(expected))  # the signs of zeros included


def test_keep_above_keeps_exactly_the_magnitudes_at_or_over_the_threshold():
    from mergebench.merging.sparsify import keep_above

    threshold = 0.3
    just = torch.tensor(threshold, dtype=torch.float32)
    below, above = torch.nextafter(just, torch.tensor(0.0)), torch.nextafter(just, torch.tensor(1.0))
    tau = torch.stack([just, -just, below, -below, above, -above, torch.tensor(0.0), torch.tensor(-0.0),
                       torch.tensor(float("inf")), torch.tensor(0.1)])
    expected = tau.masked_fill((tau < float(just)) & (tau > -float(just)), 0)
    found = keep_above(tau.clone(), float(just))
    assert torch.equal(_bits(found), _bits(expected))
    assert found.tolist()[:6] == [float(just), -float(just), 0.0, 0.0, float(above), -float(above)]
