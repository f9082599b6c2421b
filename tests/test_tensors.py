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
