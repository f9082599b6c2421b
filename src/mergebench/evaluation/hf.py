"""Hugging Face in-process backend: greedy generation and log-likelihoods, built for throughput.

Generation is a plain greedy loop over a KV cache (no sampling machinery): prompts are sorted by
length and batched, and a row leaves the batch (its cache rows dropped) as soon as it emits EOS,
reaches its token budget or contains one of its stop strings, so the remaining rows run cheaper
and the batch ends when its last row does, not after ``max_new_tokens`` for everyone.

Log-likelihoods go through :mod:`mergebench.evaluation.packing`: shared contexts (the choices of
a multiple-choice item) are computed once, requests whose text is a prefix of another request's
are read off its pass, and the LM head runs only on the positions that predict continuation
tokens, which is most of a small model's cost. A model that comes straight from the merge stage
is evaluated from memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

from mergebench import progress
from mergebench.evaluation import packed_linear, packing, row_attention
from mergebench.evaluation.api import GenerationRequest, Loglikelihood, LoglikelihoodRequest, RowListener, RowTrackingModel

if TYPE_CHECKING:
    import torch


def load_model(path: Path | str, device: str = "cpu", dtype: str = "auto"):
    """Load a causal LM and its tokenizer from a local safetensors checkpoint (no remote code).

    The weight files' headers and sizes are checked first with mergebench's own reader, so a
    truncated or corrupt shard is a :class:`~mergebench.errors.CheckpointError` naming the file
    and the fix rather than transformers' ``SafetensorError`` traceback (a file that breaks after
    that check is translated the same way).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mergebench.checkpoint.reader import check_safetensors
    from mergebench.errors import CheckpointError

    check_safetensors(path)
    torch_dtype = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(path), dtype=torch_dtype, use_safetensors=True, trust_remote_code=False
        ).to(device)
    except Exception as exc:
        if type(exc).__name__ != "SafetensorError":
            raise
        raise CheckpointError(f"cannot load the weights in {path} ({exc}); a file is probably truncated or corrupt: "
                              f"delete {path} and fetch it again, or rebuild the artifact") from None
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    return model, tokenizer


class HFLanguageModel(RowTrackingModel):
    """A transformers causal LM in this process.

    ``batch_size`` bounds the rows of one generation batch. Log-likelihood rows are packed into
    sequences of up to ``sequence_tokens`` tokens (block-diagonal attention, so no padding between
    short rows), and ``token_budget`` bounds the tokens of one forward pass.
    """

    backend = "hf"

    def __init__(self, model, tokenizer, *, name: str = "model", batch_size: int = 16, device: str = "cpu",
                 token_budget: int = 4096, sequence_tokens: int = 512) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.batch_size = batch_size
        self.device = device
        self.token_budget = token_budget
        self.sequence_tokens = sequence_tokens
        self.bos_first = starts_with_bos(model.config) and tokenizer.bos_token_id is not None
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    @classmethod
    def from_pretrained(cls, path: Path | str, *, name: str | None = None, batch_size: int = 16,
                        device: str = "cpu", **kwargs) -> "HFLanguageModel":
        model, tokenizer = load_model(path, device)
        return cls(model, tokenizer, name=name or Path(path).name, batch_size=batch_size, device=device, **kwargs)

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def chat_prompt(self, messages: Sequence[Mapping[str, str]]) -> str:
        return self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)

    # -- generation ------------------------------------------------------------------------
    def _eos_ids(self) -> set[int]:
        ids = self.model.generation_config.eos_token_id
        ids = set(ids if isinstance(ids, (list, tuple)) else [ids] if ids is not None else [])
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return ids

    def generate(self, requests: Sequence[GenerationRequest], *, keep_order: bool = False, batch_size: int | None = None,
                 row_listener: RowListener | None = None) -> list[str]:
        """Greedy continuations; batches follow prompt length unless ``keep_order`` (batches of consecutive requests)."""
        import torch

        from mergebench.evaluation.decode import greedy_batch

        encoded = [with_bos(self.tokenizer(r.prompt, add_special_tokens=False)["input_ids"], self.tokenizer, self.bos_first)
                   for r in requests]
        order = list(range(len(requests))) if keep_order else sorted(range(len(requests)), key=lambda i: -len(encoded[i]))
        outputs: list[str] = [""] * len(requests)
        rows = batch_size or self.batch_size
        eos, pad = self._eos_ids(), self.tokenizer.pad_token_id
        with torch.inference_mode(), progress.progress(f"generate ({self.name})", total=len(requests)) as bar:
            for start in range(0, len(order), rows):
                batch_ids = order[start:start + rows]
                batch = [requests[i] for i in batch_ids]
                tokens = greedy_batch(self.model, [encoded[i] for i in batch_ids], batch, pad=pad, eos=eos,
                                      device=self.device, stopped=lambda t, r: self._hit_stop(t, r.stop),
                                      on_done=lambda: bar.advance(1), row_listener=row_listener)
                for i, ids, request in zip(batch_ids, tokens, batch):
                    outputs[i] = cut_at_stop(self.tokenizer.decode(ids, skip_special_tokens=True), request.stop)
        return outputs

    def _hit_stop(self, tokens: list[int], stops: Sequence[str]) -> bool:
        """Whether the generated text now contains a stop string (checked on the last 24 tokens only)."""
        if not stops:
            return False
        tail = self.tokenizer.decode(tokens[-24:], skip_special_tokens=False)
        return any(stop in tail for stop in stops)

    # -- log-likelihood --------------------------------------------------------------------
    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[Loglikelihood]:
        import torch

        pairs = [self._encode_pair(r) for r in requests]
        packed = packing.bins(packing.plan(pairs), self.sequence_tokens)
        results: list[Loglikelihood | None] = [None] * len(requests)
        with torch.inference_mode(), packed_linear.numpy_linears(self.model), progress.progress(f"score ({self.name})", total=len(requests)) as bar:
            start = 0
            while start < len(packed):  # bins are longest first: the first of a batch sets its width
                width = sum(r.length for r in packed[start])
                end = start + 1
                while end < len(packed) and (end - start + 1) * width <= self.token_budget:
                    end += 1
                for index, result in self._score_bins(packed[start:end]):
                    results[index] = result
                    bar.advance(1)
                start = end
        missing = [i for i, r in enumerate(results) if r is None]
        if missing:  # a planning bug must never shorten a task's item list silently
            raise RuntimeError(f"log-likelihood requests {missing[:5]} were not scored")
        return results  # type: ignore[return-value]

    def _prefix_token(self) -> int:
        return prefix_token(self.tokenizer)

    def _encode_pair(self, request: LoglikelihoodRequest) -> tuple[list[int], list[int]]:
        return encode_pair(self.tokenizer, request, bos=self.bos_first)

    def _score_bins(self, batch: Sequence[Sequence[packing.Row]]) -> list[tuple[int, Loglikelihood]]:
        """One forward pass over bins of rows: block-diagonal attention, positions restarting per row."""
        import torch

        width = max(sum(r.length for r in rows) for rows in batch)
        dtype = next(self.model.parameters()).dtype
        ids = torch.full((len(batch), width), self.tokenizer.pad_token_id, dtype=torch.long)
        positions = torch.zeros((len(batch), width), dtype=torch.long)
        allowed = torch.zeros((len(batch), 1, width, width), dtype=torch.bool)
        starts: list[list[int]] = []
        for i, rows in enumerate(batch):
            at, starts_i = 0, []
            for row in rows:
                n, trunk = row.length, len(row.trunk)
                ids[i, at:at + n] = torch.tensor(row.tokens())
                positions[i, at:at + n] = torch.tensor(row.positions())
                allowed[i, 0, at:at + trunk, at:at + trunk] = torch.ones(trunk, trunk, dtype=torch.bool).tril()
                for offset, branch in zip(row.branch_offsets(), row.branches):
                    size, begin = len(branch), at + offset
                    allowed[i, 0, begin:begin + size, at:at + trunk] = True
                    allowed[i, 0, begin:begin + size, begin:begin + size] = torch.ones(size, size, dtype=torch.bool).tril()
                starts_i.append(at)
                at += n
            idle = torch.arange(at, width)  # padding attends to itself only (no all-masked NaN rows)
            allowed[i, 0, idle, idle] = True
            starts.append(starts_i)
        bias = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
        spans = [[(at, row.length, not row.branches) for row, at in zip(rows, starts[i])] for i, rows in enumerate(batch)]
        with row_attention.rows(self.model, spans):
            hidden = self.model.get_decoder()(input_ids=ids.to(self.device), attention_mask=bias.to(self.device),
                                              position_ids=positions.to(self.device)).last_hidden_state
        wanted, targets, owners = [], [], []
        for i, rows in enumerate(batch):
            for row, at in zip(rows, starts[i]):
                for read in row.reads:
                    wanted.append(hidden[i, [at + p for p in row.predicting_positions(read)]])
                    targets.extend(read.targets)
                    owners.append(read)
        token_logprobs, hits = self._target_logprobs(torch.cat(wanted), torch.tensor(targets, device=hidden.device))
        results, at = [], 0
        for read in owners:
            n = len(read.targets)
            logprob = float(token_logprobs[at:at + n].sum())
            greedy = bool(hits[at:at + n].all())
            results.append((read.index, Loglikelihood(logprob, n, greedy)))
            at += n
        return results

    def _target_logprobs(self, hidden: "torch.Tensor", targets: "torch.Tensor", chunk: int = 256):
        """Log-probability of each target token and whether it is the argmax, from hidden states [n, d].

        The LM head (with Gemma-2's final logit soft-capping) runs a chunk of positions at a time,
        so the [n, vocab] logits never exist at once.
        """
        import torch

        head = self.model.get_output_embeddings()
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        logprobs, hits = [], []
        for start in range(0, hidden.shape[0], chunk):
            logits = head(hidden[start:start + chunk]).float()
            if cap:
                logits = torch.tanh(logits / cap) * cap
            target = targets[start:start + chunk]
            picked = logits.gather(-1, target[:, None]).squeeze(-1)
            logprobs.append(picked - torch.logsumexp(logits, dim=-1))
            hits.append(logits.argmax(-1) == target)
        return torch.cat(logprobs), torch.cat(hits)


def prefix_token(tokenizer) -> int:
    """The token an empty context is conditioned on: BOS, else EOS (as lm-eval's rolling log-likelihood)."""
    for token in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if token is not None:
            return token
    raise ValueError("the tokenizer has neither a BOS nor an EOS token to condition an empty context on")


def starts_with_bos(config) -> bool:
    """Whether every sequence must start with BOS: Gemma models degrade badly without it (on Gemma-3-270m
    bits per byte of plain prose go from 0.67 to 1.66), so lm-eval adds it for them too."""
    return "gemma" in str(getattr(config, "model_type", "") or "")


def with_bos(ids: list[int], tokenizer, bos: bool) -> list[int]:
    """``ids`` with the BOS token in front when ``bos`` and not already there (a chat template may have put it)."""
    if bos and (not ids or ids[0] != tokenizer.bos_token_id):
        return [tokenizer.bos_token_id, *ids]
    return ids


def encode_pair(tokenizer, request: LoglikelihoodRequest, *, bos: bool = False) -> tuple[list[int], list[int]]:
    """Token ids of context and continuation, split where the whole string's encoding splits.

    Encoding the concatenation (not the parts) gives the tokens the model would really see;
    trailing spaces of the context move to the continuation, as lm-eval does. An empty context
    is the BOS (or EOS) token. ``bos``: the context always starts with BOS (see :func:`starts_with_bos`).
    """
    context_ids, continuation_ids = _split_pair(tokenizer, request)
    return with_bos(context_ids, tokenizer, bos), continuation_ids


def _split_pair(tokenizer, request: LoglikelihoodRequest) -> tuple[list[int], list[int]]:
    context, continuation = request.context, request.continuation
    stripped = len(context) - len(context.rstrip(" "))
    if stripped:
        context, continuation = context[:-stripped], context[-stripped:] + continuation
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    if not context:
        return [prefix_token(tokenizer)], whole
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    split = len(context_ids)
    while split > 0 and whole[:split] != context_ids[:split]:
        split -= 1
    if split == len(whole):  # continuation merged into the context's last token
        split -= 1
    if split == 0:
        return [prefix_token(tokenizer)], whole
    return whole[:split], whole[split:]


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    cut = len(text)
    for stop in stops:
        index = text.find(stop)
        if index != -1:
            cut = min(cut, index)
    return text[:cut]
