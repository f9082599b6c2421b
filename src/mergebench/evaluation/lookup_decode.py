"""Greedy decoding that checks guessed tokens in the same step: prompt-lookup drafting.

Why: at batch 16 a 135M model's step costs little more with a few tokens per row than with
one (the weights are read once per step either way), so a step that also feeds each row's
guess of its next tokens, and keeps the guesses the model itself would have produced, emits
several tokens for about the price of one. The guesses come from the row's own text: the
tokens that followed the last earlier occurrence of its final n-gram (answers repeat the
numbers and phrases of their question and of themselves). A guess is kept only while it equals
the argmax of the logits before it, so the tokens are those of one-token greedy decoding; a
wrong guess costs a little compute and nothing else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

from mergebench.evaluation.api import GenerationRequest

if TYPE_CHECKING:
    import torch

    from mergebench.evaluation.decode import Batch

NGRAMS = (3, 2)  # longest first; a single token matches too often to be worth a guess


class Drafter:
    """One row's text and, for each n-gram size, where its last earlier occurrence was followed."""

    def __init__(self, prompt: Sequence[int], guesses: int) -> None:
        self.tokens: list[int] = []
        self.guesses = guesses
        self.follows: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in NGRAMS}
        for token in prompt:
            self.append(token)

    def append(self, token: int) -> None:
        end = len(self.tokens)  # the n-grams ending before the new token are followed by it
        for n, follows in self.follows.items():
            if end >= n:
                follows[tuple(self.tokens[end - n:end])] = end
        self.tokens.append(token)

    def draft(self) -> list[int]:
        for n, follows in self.follows.items():
            start = follows.get(tuple(self.tokens[-n:]))
            if start is not None:
                return self.tokens[start:start + self.guesses]
        return []


def greedy_lookup(step, batch: "Batch", first: "torch.Tensor", prompts: Sequence[Sequence[int]],
                  requests: Sequence[GenerationRequest], *, guesses: int, eos: set[int],
                  stopped: Callable[[list[int], GenerationRequest], bool],
                  on_done: Callable[[], None]) -> list[list[int]]:
    """Generated ids of each row after the prompt pass: ``first`` (rows,) are the prompt pass's argmax.

    ``step`` is a :class:`~mergebench.evaluation.llama_step.LlamaStep` holding the prompt's cache.
    """
    import torch

    generated: list[list[int]] = [[] for _ in requests]
    drafters = [Drafter(p, guesses) for p in prompts] if guesses else []
    active = list(range(len(requests)))
    pending = first.tolist()  # each row's newest token: emitted, not yet fed to the model
    prompt = batch.mask[:, :batch.width].bool()
    positions = batch.positions[:, -1] + 1
    lengths = torch.full((len(requests),), batch.width, dtype=torch.long, device=positions.device)
    emitted: list[list[int]] = [[token] for token in pending]
    while True:
        keep = []
        for slot, row in enumerate(active):
            if take_tokens(emitted[slot], generated[row], requests[row], eos, stopped):
                on_done()
            else:
                keep.append(slot)
                for token in emitted[slot] if drafters else ():
                    drafters[row].append(token)
        if not keep:
            return generated
        if len(keep) < len(active):
            index = torch.tensor(keep, device=positions.device)
            step.select_rows(index)
            prompt, positions, lengths = prompt[index], positions[index], lengths[index]
            active = [active[slot] for slot in keep]
            pending = [pending[slot] for slot in keep]
        drafts = [drafters[row].draft() if drafters else [] for row in active]
        count = 1 + max(len(d) for d in drafts)
        tokens = torch.tensor([[token] + d + [token] * (count - 1 - len(d)) for token, d in zip(pending, drafts)],
                              device=positions.device)
        offsets = torch.arange(count, device=positions.device)
        predicted = step(tokens, positions[:, None] + offsets, lengths, prompt).argmax(-1).tolist()
        emitted, advance = [], []
        for draft, best in zip(drafts, predicted):
            kept = 0
            while kept < len(draft) and draft[kept] == best[kept]:
                kept += 1
            emitted.append(draft[:kept] + [best[kept]])
            advance.append(kept + 1)
        pending = [tokens[-1] for tokens in emitted]
        moved = torch.tensor(advance, device=positions.device)
        positions, lengths = positions + moved, lengths + moved


def take_tokens(tokens: list[int], generated: list[int], request: GenerationRequest, eos: set[int],
          stopped: Callable[[list[int], GenerationRequest], bool]) -> bool:
    """Append a step's tokens to a row one at a time, as one-token decoding would; whether the row is done
    (EOS, left out of the row; its token budget; one of its stop strings). Both decoding loops decide with it."""
    for token in tokens:
        if token in eos:
            return True
        generated.append(token)
        if len(generated) >= request.max_new_tokens or stopped(generated, request):
            return True
    return False
