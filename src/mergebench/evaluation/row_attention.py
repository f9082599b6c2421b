"""Attention of a packed log-likelihood forward, computed one packed row at a time.

Why: log-likelihood rows are packed into sequences of up to 512 tokens (:mod:`packing`), which a
block-diagonal mask keeps apart. Scaled-dot-product attention with a mask computes every query of a
sequence against every key of it, 512² pairs per sequence and head whatever the rows, and
transformers copies the keys and values once per query head when a mask comes with grouped
queries. Row by row, a row without branches is plain causal attention (the kernel skips the upper
triangle) and a row with branches uses its own block of the mask, so the work follows the rows'
own lengths. Each row sees exactly the keys the mask allowed it; the sums run over fewer masked
terms, so a log-likelihood can differ from the masked pass's in its last bits, as between BLAS
libraries. Measured on the embedded model, 1 thread, AVX2-emulated Xeon, alternating with the masked
pass: the 14 mini tasks 67.0 / 67.1 s against 70.7 / 71.1 s (the multiple-choice tasks 12-16%
faster), every score the same to the digits printed, bits-per-byte within 4e-7.

:func:`rows` is used as ``with rows(model, layout):`` around a forward pass; the model then
attends through :func:`attention` (registered with transformers' ``AttentionInterface``), which
falls back to the model's own implementation for anything it does not cover (soft-capped or
sliding-window attention, dropout, a query and key of different lengths) and off the CPU, where a
kernel launch per row would cost more than the masked pass's extra work.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import TYPE_CHECKING, Iterator, Sequence

if TYPE_CHECKING:
    import torch

NAME = "mergebench_rows"
"""The name :func:`attention` is registered under in transformers' ``AttentionInterface``."""

Span = tuple[int, int, bool]
"""A packed row: its first column, its length, and whether it is a plain causal trunk (no branches)."""

_layout: contextvars.ContextVar["Sequence[Sequence[Span]] | None"] = contextvars.ContextVar("row_attention_layout",
                                                                                            default=None)


def attention(module, query: "torch.Tensor", key: "torch.Tensor", value: "torch.Tensor",
              attention_mask: "torch.Tensor | None", dropout: float = 0.0, scaling: float | None = None, **kwargs):
    """transformers' attention signature: ``query`` (batch, heads, length, dim), keys and values with
    their own head count; returns the output as (batch, length, heads, dim) and no weights."""
    import torch
    import torch.nn.functional as F
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    spans = _layout.get()
    covered = (spans is not None and query.device.type == "cpu" and not dropout and attention_mask is not None
               and query.shape[2] == key.shape[2]
               and all(kwargs.get(name) is None for name in ("softcap", "sliding_window", "position_bias")))
    if not covered:
        return ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, attention_mask, dropout=dropout,
                                               scaling=scaling, **kwargs)
    grouped = query.shape[1] != key.shape[1]
    out = torch.zeros_like(query)  # padding columns attend to nothing; nothing reads them
    for i, row_spans in enumerate(spans):
        for start, length, causal in row_spans:
            cols = slice(start, start + length)
            q, k, v = query[i:i + 1, :, cols], key[i:i + 1, :, cols], value[i:i + 1, :, cols]
            if causal:
                out[i:i + 1, :, cols] = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling,
                                                                       enable_gqa=grouped)
            else:
                out[i:i + 1, :, cols] = F.scaled_dot_product_attention(
                    q, k, v, attn_mask=attention_mask[i:i + 1, :, cols, cols], scale=scaling, enable_gqa=grouped)
    return out.transpose(1, 2).contiguous(), None


@functools.lru_cache(maxsize=1)
def _register() -> None:
    """Once per process: every forward of an evaluation enters :func:`rows`."""
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, attention)


@contextlib.contextmanager
def rows(model, spans: Sequence[Sequence[Span]]) -> Iterator[bool]:
    """Within the block, ``model``'s attention runs row by row over ``spans`` (one list per sequence of
    the batch); yields whether it does: for models that attend through ``sdpa`` and have no sub-configs
    (transformers sets an implementation on every sub-config, and one of them could have its own)."""
    config = model.config
    own = getattr(config, "_attn_implementation", None)
    if own != "sdpa" or getattr(config, "sub_configs", None):
        yield False
        return
    _register()
    token = _layout.set(spans)
    config._attn_implementation = NAME
    try:
        yield True
    finally:
        config._attn_implementation = own
        _layout.reset(token)
