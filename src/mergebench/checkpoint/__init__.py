"""Reading, writing and checking Hugging Face checkpoints, tensor by tensor."""

from mergebench.checkpoint.compat import check_compatible, vocab_aligned
from mergebench.checkpoint.reader import CheckpointReader
from mergebench.checkpoint.writer import ShardedWriter, copy_tokenizer_files

__all__ = ["CheckpointReader", "ShardedWriter", "check_compatible", "copy_tokenizer_files", "vocab_aligned"]
