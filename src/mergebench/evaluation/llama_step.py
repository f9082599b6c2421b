"""One greedy decoding step of a Llama-family model, written out with fewer operations.

Why: decoding a 135M model on a CPU at batch 16 is bound by what each step costs besides the
multiply-adds, and a profile of transformers' forward at that size put a quarter of the step
in ``torch.cat`` (``DynamicCache`` appends every layer's key and value by copying the whole
cache) and much of the rest in per-layer bookkeeping (mask building, rotary tables, one call
per projection). Here the keys and values live in one buffer per layer sized to the batch's
prompt width plus its token budget and are written in place; q/k/v and gate/up are one matrix
product each; the rotary cosines and sines come from a table the model's own rotary module
computed for every position once.

The products go through weights prepacked for the batch's row count, or through numpy's BLAS on
CPUs other than Intel's (:mod:`mergebench.evaluation.packed_linear`); the arranged (concatenated and packed) weights are
kept with the model until one of its parameters changes, in place or replaced, so the batches of
one evaluation arrange them once and weights edited between calls (as the search does) are
always the current ones.

The prompts go through :meth:`LlamaStep.prefill`: every prompt's own tokens and, once, the
tokens all prompts start with (a chat template's system turn), as one sequence without padding
for the products, each prompt attending to the shared start and to itself. Left padding would
have the products run on every pad column (a third of a GSM8K batch's columns) and the shared
start once per row. Each operation is the one transformers' Llama layers run, in the same
order, so the greedy tokens are those of ``generate`` (the tests compare them).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from mergebench.evaluation import packed_linear
from mergebench.evaluation.packed_linear import PackedMatrix

if TYPE_CHECKING:
    import torch


def supports(model) -> bool:
    """Whether :class:`LlamaStep` computes this model's forward pass (plain Llama layers, no hooks)."""
    config = model.config
    if getattr(config, "model_type", None) != "llama" or getattr(config, "hidden_act", None) != "silu":
        return False
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        return False
    if getattr(config, "pretraining_tp", 1) not in (None, 1):
        return False
    # hooks (the search's per-row weight deltas) and forwards replaced on a module act on module
    # calls that this step does not make
    return not any(m._forward_hooks or m._forward_pre_hooks or "forward" in vars(m) for m in model.modules())


@dataclass
class _Layer:
    norm1: "torch.Tensor"
    eps1: float
    qkv: PackedMatrix
    o: PackedMatrix
    norm2: "torch.Tensor"
    eps2: float
    gate_up: PackedMatrix
    down: PackedMatrix


@dataclass
class _Weights:
    """A model's weights as the step multiplies them, valid while ``key`` is the model's."""

    key: tuple | None
    rows: int
    embed: "torch.Tensor"
    layers: list[_Layer]
    norm: "torch.Tensor"
    norm_eps: float
    lm_head: PackedMatrix
    library: str  # which BLAS multiplies (packed_linear.blas())


_ARRANGED: "weakref.WeakKeyDictionary[object, _Weights]" = weakref.WeakKeyDictionary()


def weights_key(model) -> tuple | None:
    """Where each parameter lives and how often it was written in place; None when that cannot be told."""
    try:
        return tuple((p.data_ptr(), p._version) for p in model.parameters())
    except RuntimeError:  # inference tensors keep no version counter
        return None


def arranged_weights(model, rows: int) -> _Weights:
    """The model's weights concatenated and packed for ``rows`` rows, reused while the model is unchanged."""
    import torch

    key = weights_key(model)
    library = packed_linear.blas()
    if library == "numpy":
        packed_linear.blas_threads(torch.get_num_threads())
    cached = _ARRANGED.get(model)
    if (key is not None and cached is not None and cached.key == key and cached.rows >= rows
            and cached.library == library):
        return cached
    decoder = model.get_decoder()
    lm_head = model.get_output_embeddings().weight
    matrices = [p for p in decoder.layers.parameters() if p.dim() == 2] + [lm_head]
    pack = packed_linear.packed_allocation(matrices) <= packed_linear.PACK_LIMIT_BYTES
    layers = []
    for layer in decoder.layers:
        attn, mlp = layer.self_attn, layer.mlp
        layers.append(_Layer(
            layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon,
            PackedMatrix(torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]), rows, pack=pack,
                         library=library),
            PackedMatrix(attn.o_proj.weight, rows, pack=pack, library=library),
            layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon,
            PackedMatrix(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]), rows, pack=pack, library=library),
            PackedMatrix(mlp.down_proj.weight, rows, pack=pack, library=library)))
    weights = _Weights(key, rows, decoder.embed_tokens.weight, layers, decoder.norm.weight,
                       decoder.norm.variance_epsilon, PackedMatrix(lm_head, rows, pack=pack, library=library), library)
    _ARRANGED.pop(model, None)  # the old arrangement's memory goes before the next is kept
    if key is not None:
        _ARRANGED[model] = weights
    return weights


def shared_start(prompts: Sequence[Sequence[int]]) -> int:
    """How many tokens every prompt starts with, leaving each prompt at least one token of its own."""
    shortest = min(len(p) for p in prompts)
    count = 0
    while count < shortest - 1 and all(p[count] == prompts[0][count] for p in prompts):
        count += 1
    return count


def rms_norm(hidden: "torch.Tensor", weight: "torch.Tensor", eps: float) -> "torch.Tensor":
    """``LlamaRMSNorm.forward``, operation for operation."""
    import torch

    dtype = hidden.dtype
    hidden = hidden.to(torch.float32)
    variance = hidden.pow(2).mean(-1, keepdim=True)
    hidden = hidden * torch.rsqrt(variance + eps)
    return weight * hidden.to(dtype)


def rotate_half(x: "torch.Tensor") -> "torch.Tensor":
    import torch

    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class LlamaStep:
    """A model's weights arranged for decoding, and the key/value buffers of one batch of ``rows`` rows."""

    def __init__(self, model, capacity: int, rows: int) -> None:
        import torch

        config = model.config
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.scaling = self.head_dim ** -0.5
        self.capacity = capacity
        weights = arranged_weights(model, rows)
        self.embed, self.layers, self.lm_head = weights.embed, weights.layers, weights.lm_head
        self.norm, self.norm_eps = weights.norm, weights.norm_eps
        positions = torch.arange(capacity, device=self.embed.device)[None]
        cos, sin = model.get_decoder().rotary_emb(self.embed[:1][None], positions)  # the model's own table
        self.cos, self.sin = cos[0], sin[0]
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    def select_rows(self, index: "torch.Tensor") -> None:
        self.keys = [k.index_select(0, index) for k in self.keys]
        self.values = [v.index_select(0, index) for v in self.values]

    def prefill(self, prompts: Sequence[Sequence[int]], width: int) -> "torch.Tensor":
        """Logits after each prompt's last token (rows, vocab); its keys and values go into the buffers
        left-padded, prompt ``r`` in columns ``width - len(prompts[r])`` to ``width``, as :class:`Batch` lays them.

        The products run on one sequence: the tokens every prompt starts with, once, then each
        prompt's own tokens; attention runs per prompt (the shared start with itself, causally; each
        prompt's own tokens with the shared start's keys and their own, causally).
        """
        import torch
        import torch.nn.functional as F

        device = self.embed.device
        shared = shared_start(prompts)
        own = [list(p[shared:]) for p in prompts]
        tokens = torch.tensor(list(prompts[0][:shared]) + [t for part in own for t in part], device=device)
        positions = torch.cat([torch.arange(shared)] + [torch.arange(shared, len(p)) for p in prompts]).to(device)
        ends = torch.tensor([len(part) for part in own]).cumsum(0) + shared  # one past each prompt's last token
        starts = [width - len(p) for p in prompts]  # each prompt's first column in the buffers
        shape = (len(prompts), self.kv_heads, self.capacity, self.head_dim)
        self.keys = [torch.zeros(shape, dtype=self.embed.dtype, device=device) for _ in self.layers]
        self.values = [torch.zeros(shape, dtype=self.embed.dtype, device=device) for _ in self.layers]
        count = tokens.shape[0]
        q_size, kv_size = self.heads * self.head_dim, self.kv_heads * self.head_dim
        cos, sin = self.cos[positions][:, None], self.sin[positions][:, None]  # (count, 1, head_dim)
        masks = [torch.arange(len(part), device=device)[:, None] + shared >= torch.arange(width - start, device=device)
                 for part, start in zip(own, starts)]
        gqa = self.heads != self.kv_heads
        hidden = F.embedding(tokens, self.embed)
        for layer, keys, values in zip(self.layers, self.keys, self.values):
            x = rms_norm(hidden, layer.norm1, layer.eps1)
            q, k, v = layer.qkv(x).split((q_size, kv_size, kv_size), dim=-1)
            q = q.view(count, self.heads, self.head_dim)
            q = ((q * cos) + (rotate_half(q) * sin)).transpose(0, 1)  # (heads, count, head_dim)
            k = k.view(count, self.kv_heads, self.head_dim)
            k = ((k * cos) + (rotate_half(k) * sin)).transpose(0, 1)
            v = v.view(count, self.kv_heads, self.head_dim).transpose(0, 1)
            attn = torch.empty_like(q)
            if shared:
                attn[:, :shared] = F.scaled_dot_product_attention(
                    q[None, :, :shared], k[None, :, :shared], v[None, :, :shared], is_causal=True,
                    scale=self.scaling, enable_gqa=gqa)[0]
            begin = shared
            for row, (start, end, mask) in enumerate(zip(starts, ends.tolist(), masks)):
                keys[row, :, start:start + shared], values[row, :, start:start + shared] = k[:, :shared], v[:, :shared]
                keys[row, :, start + shared:width], values[row, :, start + shared:width] = k[:, begin:end], v[:, begin:end]
                attn[:, begin:end] = F.scaled_dot_product_attention(
                    q[None, :, begin:end], keys[row:row + 1, :, start:width], values[row:row + 1, :, start:width],
                    attn_mask=mask, scale=self.scaling, enable_gqa=gqa)[0]
                begin = end
            hidden = hidden + layer.o(attn.transpose(0, 1).reshape(count, q_size))
            x = rms_norm(hidden, layer.norm2, layer.eps2)
            gate, up = layer.gate_up(x).chunk(2, dim=-1)
            hidden = hidden + layer.down(F.silu(gate) * up)
        return self.lm_head(rms_norm(hidden[ends - 1], self.norm, self.norm_eps))

    def __call__(self, tokens: "torch.Tensor", positions: "torch.Tensor", lengths: "torch.Tensor",
                 prompt: "torch.Tensor") -> "torch.Tensor":
        """Logits after each of ``tokens`` (rows, T) at ``positions`` (rows, T), for every row and position.

        Row ``r``'s cache holds its prompt where ``prompt[r]`` (rows, width) is True, then its
        generated tokens from column ``width`` up to ``lengths[r]``; the ``T`` new tokens are
        written from ``lengths[r]`` on, each attending to the cache and to the new tokens before it.
        """
        import torch
        import torch.nn.functional as F

        rows, count = tokens.shape
        width = prompt.shape[1]
        q_size, kv_size = self.heads * self.head_dim, self.kv_heads * self.head_dim
        offsets = torch.arange(count, device=tokens.device)
        columns = lengths[:, None] + offsets  # (rows, T): where each new token's key and value go
        span = int(columns.max()) + 1
        keys_at = torch.arange(span, device=tokens.device)
        mask = (keys_at >= width) & (keys_at <= columns[..., None])  # (rows, T, span)
        mask[..., :width] |= prompt[:, None]
        mask = mask[:, None]
        cos, sin = self.cos[positions], self.sin[positions]  # (rows, T, head_dim)
        row_index = torch.arange(rows, device=tokens.device)[:, None]
        hidden = F.embedding(tokens, self.embed)
        for layer, keys, values in zip(self.layers, self.keys, self.values):
            x = rms_norm(hidden, layer.norm1, layer.eps1)
            q, k, v = layer.qkv(x).split((q_size, kv_size, kv_size), dim=-1)
            q = q.view(rows, count, self.heads, self.head_dim).transpose(1, 2)
            q = (q * cos[:, None]) + (rotate_half(q) * sin[:, None])
            k = k.view(rows, count, self.kv_heads, self.head_dim)
            keys[row_index, :, columns] = (k * cos[:, :, None]) + (rotate_half(k) * sin[:, :, None])
            values[row_index, :, columns] = v.view(rows, count, self.kv_heads, self.head_dim)
            attn = F.scaled_dot_product_attention(q, keys[:, :, :span], values[:, :, :span], attn_mask=mask,
                                                  scale=self.scaling, enable_gqa=self.heads != self.kv_heads)
            hidden = hidden + layer.o(attn.transpose(1, 2).reshape(rows, count, q_size))
            x = rms_norm(hidden, layer.norm2, layer.eps2)
            gate, up = layer.gate_up(x).chunk(2, dim=-1)
            hidden = hidden + layer.down(F.silu(gate) * up)
        return self.lm_head(rms_norm(hidden, self.norm, self.norm_eps))
