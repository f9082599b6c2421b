"""Can these checkpoints be merged? Checked before any output is written.

Merging is parameter arithmetic, so base and experts must share the architecture, every
tensor name and shape, and the meaning of every token id. One mismatch is tolerated because
the study's own experts have it: an expert whose vocabulary has *more rows* than the base
(MergeBench's Llama-3.2-3B experts carry 128,320 embedding rows against the base's 128,256,
padding added when their tokenizer was resized). The merged model keeps the base tokenizer, so
rows past the base vocabulary are dropped, and an expert with *fewer* rows contributes the
base's rows there (a zero task vector). :func:`vocab_aligned` does that per tensor.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from mergebench.checkpoint.reader import CheckpointReader
from mergebench.errors import IncompatibleModelsError

if TYPE_CHECKING:
    import torch

STRUCTURE_KEYS = (
    "model_type",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "head_dim",
    "tie_word_embeddings",
)


def _architecture(config: Mapping) -> tuple[str, ...]:
    return tuple(config.get("architectures") or ())


def check_compatible(base: CheckpointReader, experts: Mapping[str, CheckpointReader]) -> None:
    """Raise :class:`IncompatibleModelsError` naming the first difference that prevents merging."""
    base_config = base.config()
    base_vocab = int(base_config.get("vocab_size") or 0)
    for label, expert in experts.items():
        config = expert.config()
        if _architecture(config) != _architecture(base_config):
            raise IncompatibleModelsError(
                f"expert {label!r} ({expert.directory}) is a {'/'.join(_architecture(config)) or '?'} but the base "
                f"is a {'/'.join(_architecture(base_config)) or '?'}; merging needs experts finetuned from the same base"
            )
        for key in STRUCTURE_KEYS:
            if key in base_config and config.get(key) != base_config.get(key):
                raise IncompatibleModelsError(
                    f"expert {label!r} has {key}={config.get(key)!r} but the base has {base_config.get(key)!r}; "
                    "it was not finetuned from this base"
                )
        missing = [n for n in base.names() if n not in expert]
        extra = [n for n in expert.names() if n not in base]
        if missing or extra:
            detail = []
            if missing:
                detail.append(f"missing {len(missing)} tensors (e.g. {missing[0]!r})")
            if extra:
                detail.append(f"has {len(extra)} extra tensors (e.g. {extra[0]!r})")
            raise IncompatibleModelsError(
                f"expert {label!r} ({expert.directory}) {' and '.join(detail)} compared to the base; "
                "merge only full checkpoints of the same architecture (merge LoRA adapters into the weights first)"
            )
        rows = int(config.get("vocab_size") or base_vocab)
        for name in base.names():
            base_shape, expert_shape = base.shape(name), expert.shape(name)
            if base_shape == expert_shape:
                continue
            if rows != base_vocab and _is_vocab_tensor(base_shape, expert_shape, base_vocab, rows):
                continue
            raise IncompatibleModelsError(
                f"tensor {name!r} has shape {list(expert_shape)} in expert {label!r} but {list(base_shape)} in the base"
            )
        _check_tokenizers(base.directory, expert.directory, label, min(rows, base_vocab))


def _is_vocab_tensor(base_shape: tuple[int, ...], expert_shape: tuple[int, ...], base_rows: int, expert_rows: int) -> bool:
    """Whether the two shapes are one vocabulary-sized tensor: ``base_rows`` rows against ``expert_rows``, the rest equal."""
    return base_shape[0] == base_rows and expert_shape[0] == expert_rows and base_shape[1:] == expert_shape[1:]


def _token_ids(directory: Path) -> dict[str, int] | None:
    path = Path(directory) / "tokenizer.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    vocab = dict((data.get("model") or {}).get("vocab") or {})
    if isinstance(vocab, list):  # unigram models store [token, score] pairs
        vocab = {tok: i for i, (tok, _score) in enumerate(vocab)}
    for added in data.get("added_tokens") or ():
        vocab[added["content"]] = added["id"]
    return vocab


def _same_file(a: Path, b: Path) -> bool:
    if not (a.is_file() and b.is_file()) or a.stat().st_size != b.stat().st_size:
        return False
    return a.read_bytes() == b.read_bytes()


def _check_tokenizers(base_dir: Path, expert_dir: Path, label: str, shared_rows: int) -> None:
    """Token ids below ``shared_rows`` must mean the same token in both tokenizers."""
    if _same_file(Path(base_dir) / "tokenizer.json", Path(expert_dir) / "tokenizer.json"):
        return  # the common case, and parsing a 128k-token vocabulary twice per expert costs seconds
    base_ids, expert_ids = _token_ids(base_dir), _token_ids(expert_dir)
    if base_ids is None or expert_ids is None:
        return
    base_by_id = {i: t for t, i in base_ids.items() if i < shared_rows}
    expert_by_id = {i: t for t, i in expert_ids.items() if i < shared_rows}
    for token_id in sorted(base_by_id):
        theirs = expert_by_id.get(token_id)
        if theirs is not None and theirs != base_by_id[token_id]:
            raise IncompatibleModelsError(
                f"expert {label!r} uses a different vocabulary: token id {token_id} is {theirs!r} in its "
                f"tokenizer but {base_by_id[token_id]!r} in the base's; experts must keep the base tokenizer"
            )


def vocab_aligned(base: "torch.Tensor", expert: "torch.Tensor") -> "torch.Tensor":
    """``expert`` cut or padded (with base rows) to the base's number of rows."""
    import torch

    rows = base.shape[0]
    if expert.shape[0] == rows:
        return expert
    if expert.shape[0] > rows:
        return expert[:rows]
    return torch.cat([expert, base[expert.shape[0]:].to(expert.dtype)], dim=0)
