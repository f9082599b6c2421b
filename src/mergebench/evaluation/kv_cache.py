"""A key/value cache written in place, for greedy decoding on the CPU.

Why: transformers' ``DynamicCache`` grows by ``torch.cat`` at every step, so each step copies the
whole cache of every layer into a freshly allocated tensor; on a CPU that copy (and the page
faults of the new allocation) costs about as much as the attention that reads it. Here every
layer's keys and values live in a buffer sized for the batch's prompt plus its token budget,
a step writes one column, and attention reads a view of the filled part.

Layers whose attention does not fit this scheme are left as transformers made them: a sliding
window layer is replaced only when the whole sequence fits in its window (then it attends to
everything, as a full layer does), and layer kinds this module does not know stay untouched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def _layer_classes():
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    class InPlaceLayer(DynamicLayer):
        """A full-attention layer whose keys and values are written into a preallocated buffer."""

        def __init__(self, capacity: int) -> None:
            super().__init__()
            self.capacity = capacity
            self.length = 0

        def lazy_initialization(self, key_states, value_states) -> None:
            import torch

            self.device = key_states.device
            rows, heads, _, key_dim = key_states.shape
            self.key_buffer = torch.empty((rows, heads, self.capacity, key_dim), dtype=key_states.dtype, device=self.device)
            self.value_buffer = torch.empty((rows, heads, self.capacity, value_states.shape[-1]), dtype=value_states.dtype,
                                            device=self.device)
            self.is_initialized = True

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            start, stop = self.length, self.length + key_states.shape[-2]
            if stop > self.capacity:
                raise RuntimeError(f"the key/value cache holds {self.capacity} positions, {stop} were asked for")
            self.key_buffer[:, :, start:stop] = key_states
            self.value_buffer[:, :, start:stop] = value_states
            self.length = stop
            self.keys, self.values = self.key_buffer[:, :, :stop], self.value_buffer[:, :, :stop]
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self.length

        def batch_select_indices(self, indices) -> None:
            """Keep the rows ``indices``: copies the filled columns only, once per finished row."""
            if not self.is_initialized:
                return
            self.key_buffer = _select_rows(self.key_buffer, indices, self.length)
            self.value_buffer = _select_rows(self.value_buffer, indices, self.length)
            self.keys, self.values = self.key_buffer[:, :, :self.length], self.value_buffer[:, :, :self.length]

    class InPlaceWindowLayer(InPlaceLayer):
        """A sliding-window layer whose whole sequence fits in its window: it attends to every position."""

        is_sliding = True

        def __init__(self, capacity: int, sliding_window: int) -> None:
            super().__init__(capacity)
            self.sliding_window = sliding_window

        def get_max_length(self) -> int:
            return self.sliding_window

    return DynamicLayer, DynamicSlidingWindowLayer, InPlaceLayer, InPlaceWindowLayer


def _select_rows(buffer: "torch.Tensor", indices: "torch.Tensor", length: int) -> "torch.Tensor":
    out = buffer.new_empty((len(indices), *buffer.shape[1:]))
    out[:, :, :length] = buffer[indices, :, :length]
    return out


def in_place_cache(config, capacity: int):
    """A cache for ``capacity`` positions of every row (prompt width plus token budget).

    Falls back to transformers' own ``DynamicCache`` layer by layer where the in-place layer
    would change what attention sees, and entirely where this transformers has no cache layers.
    """
    from transformers import DynamicCache

    cache = DynamicCache(config=config)
    try:
        dynamic, sliding, in_place, in_place_window = _layer_classes()
    except ImportError:  # transformers before cache layers: its own cache, as before
        return cache
    layers = getattr(cache, "layers", None)
    if not layers:
        return cache
    for index, layer in enumerate(layers):
        if type(layer) is dynamic:
            layers[index] = in_place(capacity)
        elif type(layer) is sliding and capacity <= layer.sliding_window:
            layers[index] = in_place_window(capacity, layer.sliding_window)
    return cache
