"""Batches of similar length, in random order: the same examples and steps, less padding.

A batch is padded to its longest example, and on a CPU every padded position costs as much as
a real one (the attention mask hides it, the matrix products still compute it). The mini
recipes' examples run from 40 to 256 tokens, so randomly drawn batches of 8 were ~40% padding.
Sorting by length and cutting the sorted list into batches leaves almost none; shuffling the
batches (not the examples) keeps the order of steps random. Every example is still seen once
per epoch. ``benchmarks/perf/recipe_speed.py`` measures the effect.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence


def length_grouped_order(lengths: Sequence[int], batch_size: int, seed: int) -> list[int]:
    """Indices of ``lengths`` such that consecutive runs of ``batch_size`` hold examples of similar length.

    Ties in length are broken by a seeded shuffle first, and the batches come in a seeded random
    order, so the order depends only on ``lengths``, ``batch_size`` and ``seed``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    rng = random.Random(f"mergebench:length-batches:{seed}")
    shuffled = list(range(len(lengths)))
    rng.shuffle(shuffled)
    ordered = sorted(shuffled, key=lambda i: lengths[i])  # stable: ties keep the shuffled order
    batches = [ordered[start:start + batch_size] for start in range(0, len(ordered), batch_size)]
    rng.shuffle(batches)
    return [i for batch in batches for i in batch]


def padded_tokens(lengths: Sequence[int], order: Sequence[int], batch_size: int) -> int:
    """Positions computed when ``order`` is cut into batches padded to their longest example."""
    return sum(len(batch) * max(lengths[i] for i in batch)
               for batch in (order[start:start + batch_size] for start in range(0, len(order), batch_size)))


class LengthGroupedBatches:
    """A torch ``Sampler`` (duck-typed: ``__iter__`` and ``__len__``) yielding :func:`length_grouped_order`.

    The same order every epoch and every resume, so a resumed run skips exactly the batches it
    already trained on.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int) -> None:
        self.order = length_grouped_order(lengths, batch_size, seed)

    def __iter__(self) -> Iterator[int]:
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)
