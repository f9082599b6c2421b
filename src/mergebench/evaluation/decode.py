"""The greedy decoding loop of the ``hf`` backend: one batch of prompts, one token a step.

Why its own loop and not ``model.generate``: decoding a small model on a CPU is bound by what
each step costs besides the arithmetic, and by steps spent on rows that are already done.
Here a row leaves the batch as soon as it emits EOS, reaches its budget or contains a stop
string (its cache rows are dropped, so the remaining rows run cheaper); the attention mask is
allocated once for the whole budget; and the LM head runs on the last position only.
A plain Llama-family model (no hooks) decodes through :mod:`mergebench.evaluation.llama_step`
(keys and values written in place, fewer operations a layer) in
:mod:`mergebench.evaluation.lookup_decode`; other models through their own forward pass and
transformers' ``DynamicCache``. The tokens are those of greedy decoding with the model's own forward pass.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

from mergebench.evaluation import llama_step
from mergebench.evaluation.api import GenerationRequest, RowListener
from mergebench.evaluation.lookup_decode import greedy_lookup, take_tokens

if TYPE_CHECKING:
    import torch


GUESSES = 0
"""Tokens guessed ahead per row and step on the Llama fast path (:mod:`mergebench.evaluation.lookup_decode`).

Off (0) by default: on GSM8K answers a prompt-lookup guess holds for about 0.2 tokens a step, and a
batch-16 step fed five tokens a row costs well over 1.2 steps of one (README, speed table).
"""


@dataclass
class Batch:
    """Left-padded prompts: every prompt ends at column ``width``; ``mask`` has room for the budget."""

    ids: "torch.Tensor"
    mask: "torch.Tensor"
    positions: "torch.Tensor"
    width: int
    capacity: int

    @classmethod
    def of(cls, prompts: Sequence[Sequence[int]], budget: int, pad: int, device) -> "Batch":
        import torch

        width = max(len(p) for p in prompts)
        capacity = width + budget
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), capacity), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
            mask[row, width - len(prompt):width] = 1
        positions = (mask[:, :width].cumsum(-1) - 1).clamp(min=0)
        return cls(ids.to(device), mask.to(device), positions.to(device), width, capacity)


def cache_argument(model) -> str:
    """The name under which this transformers' forward takes the cache (``cache`` since 5.x)."""
    try:
        parameters = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in parameters else "past_key_values"


def greedy_batch(model, prompts: Sequence[Sequence[int]], requests: Sequence[GenerationRequest], *, pad: int,
                 eos: set[int], device, stopped: Callable[[list[int], GenerationRequest], bool],
                 on_done: Callable[[], None], row_listener: RowListener | None = None,
                 guesses: int = GUESSES) -> list[list[int]]:
    """Generated token ids of each prompt (EOS excluded), decoding all rows of the batch together.

    ``stopped(tokens, request)``: whether a row's tokens now contain one of its stop strings;
    ``on_done()``: called once per finished row; ``row_listener``: told the rows of every forward pass.
    """
    import torch
    from transformers import DynamicCache

    batch = Batch.of(prompts, max(r.max_new_tokens for r in requests), pad, device)
    if row_listener is None and all(prompts) and llama_step.supports(model):
        step = llama_step.LlamaStep(model, batch.capacity + guesses, rows=len(requests))
        first = step.prefill(prompts, batch.width).argmax(-1)
        return greedy_lookup(step, batch, first, prompts, requests, guesses=guesses, eos=eos,
                             stopped=stopped, on_done=on_done)
    cache = DynamicCache(config=model.config)
    cache_kw = cache_argument(model)
    generated: list[list[int]] = [[] for _ in requests]
    active = list(range(len(requests)))  # rows still generating, in cache order
    if row_listener is not None:
        row_listener(list(requests))
    logits = model(input_ids=batch.ids, attention_mask=batch.mask[:, :batch.width], position_ids=batch.positions,
                   use_cache=True, logits_to_keep=1, **{cache_kw: cache}).logits
    mask, positions, column = batch.mask, batch.positions[:, -1:] + 1, batch.width
    while True:
        next_tokens = logits[:, -1].argmax(-1)
        keep = []
        for slot, (row, token) in enumerate(zip(active, next_tokens.tolist())):
            if take_tokens([token], generated[row], requests[row], eos, stopped):
                on_done()
            else:
                keep.append(slot)
        if not keep:
            return generated
        if len(keep) < len(active):
            index = torch.tensor(keep, device=mask.device)
            cache.batch_select_indices(index)
            mask, positions, next_tokens = mask[index], positions[index], next_tokens[index]
            active = [active[slot] for slot in keep]
        mask[:, column] = 1
        column += 1
        if row_listener is not None:
            row_listener([requests[row] for row in active])
        logits = model(input_ids=next_tokens[:, None], attention_mask=mask[:, :column], position_ids=positions,
                       use_cache=True, logits_to_keep=1, **{cache_kw: cache}).logits
        positions = positions + 1
