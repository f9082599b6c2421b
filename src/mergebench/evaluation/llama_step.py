"""One greedy decoding step of a Llama-family model, written out with fewer operations.

Why: decoding a 135M model on a CPU at batch 16 is bound by what each step costs besides the
multiply-adds, and a profile of transformers' forward at that size put a quarter of the step
in ``torch.cat`` (``DynamicCache`` appends every layer's key and value by copying the whole
cache) and much of the rest in per-layer bookkeeping (mask building, rotary tables, one call
per projection). Here the keys and values live in one buffer per layer sized to the batch's
prompt width plus its token budget and are written in place; q/k/v and gate/up are one matrix
product each, from weights concatenated once per ``generate`` call (so weights edited between
calls, as the search does, are always the current ones); the rotary cosines and sines come
from a table the model's own rotary module computed for every position once.

The prompt itself still goes through the model's own forward pass (one call, no per-step
cost), and each operation of the step is the one transformers' Llama layers run, in the same
order, so the greedy tokens are those of ``generate`` (the tests compare them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

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
    qkv: "torch.Tensor"
    o: "torch.Tensor"
    norm2: "torch.Tensor"
    eps2: float
    gate_up: "torch.Tensor"
    down: "torch.Tensor"


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
    """A model's weights arranged for decoding, and the key/value buffers of one batch."""

    def __init__(self, model, capacity: int) -> None:
        import torch

        config = model.config
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.scaling = self.head_dim ** -0.5
        self.capacity = capacity
        decoder = model.get_decoder()
        self.embed = decoder.embed_tokens.weight
        self.layers = []
        for layer in decoder.layers:
            attn, mlp = layer.self_attn, layer.mlp
            self.layers.append(_Layer(
                layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon,
                torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]), attn.o_proj.weight,
                layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon,
                torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]), mlp.down_proj.weight))
        self.norm, self.norm_eps = decoder.norm.weight, decoder.norm.variance_epsilon
        self.lm_head = model.get_output_embeddings().weight
        positions = torch.arange(capacity, device=self.embed.device)[None]
        cos, sin = decoder.rotary_emb(self.embed[:1][None], positions)  # the model's own table, every position
        self.cos, self.sin = cos[0], sin[0]
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    def take_cache(self, cache, rows: int, width: int) -> None:
        """Copy the prompt's keys and values from transformers' cache into buffers with room for the budget."""
        shape = (rows, self.kv_heads, self.capacity, self.head_dim)
        self.keys, self.values = [], []
        for layer in cache.layers:
            keys, values = layer.keys.new_zeros(shape), layer.values.new_zeros(shape)
            keys[:, :, :width] = layer.keys
            values[:, :, :width] = layer.values
            self.keys.append(keys)
            self.values.append(values)

    def select_rows(self, index: "torch.Tensor") -> None:
        self.keys = [k.index_select(0, index) for k in self.keys]
        self.values = [v.index_select(0, index) for v in self.values]

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
            q, k, v = F.linear(x, layer.qkv).split((q_size, kv_size, kv_size), dim=-1)
            q = q.view(rows, count, self.heads, self.head_dim).transpose(1, 2)
            q = (q * cos[:, None]) + (rotate_half(q) * sin[:, None])
            k = k.view(rows, count, self.kv_heads, self.head_dim)
            keys[row_index, :, columns] = (k * cos[:, :, None]) + (rotate_half(k) * sin[:, :, None])
            values[row_index, :, columns] = v.view(rows, count, self.kv_heads, self.head_dim)
            attn = F.scaled_dot_product_attention(q, keys[:, :, :span], values[:, :, :span], attn_mask=mask,
                                                  scale=self.scaling, enable_gqa=self.heads != self.kv_heads)
            hidden = hidden + F.linear(attn.transpose(1, 2).reshape(rows, count, q_size), layer.o)
            x = rms_norm(hidden, layer.norm2, layer.eps2)
            gate, up = F.linear(x, layer.gate_up).chunk(2, dim=-1)
            hidden = hidden + F.linear(F.silu(gate) * up, layer.down)
        return F.linear(rms_norm(hidden, self.norm, self.norm_eps), self.lm_head)
