"""Synthetic experts for tests: the base plus a seeded random perturbation, no training.

Each domain gets its own sparse Gaussian task vector (30% of entries, scale 1% of the
tensor's standard deviation), so merges of tiny models have distinct, overlapping task vectors
to work on. They are not experts at anything; they exist to test the pipeline in seconds.
"""

from __future__ import annotations

import zlib
from pathlib import Path

from mergebench.checkpoint import CheckpointReader, ShardedWriter, copy_tokenizer_files
from mergebench.finetune.api import Recipe


class SyntheticExpert(Recipe):
    density = 0.3
    scale = 0.01

    def fingerprint(self) -> dict:
        return {"density": self.density, "scale": self.scale}

    def samples(self, n: int, seed: int = 0) -> list[dict[str, str]]:
        """The toy task's strings of the domain (there is no training data: the expert is noise)."""
        from mergebench_builtins.tasks.toy import TEXTS

        texts = TEXTS.get(self.spec.domain) or [t for domain_texts in TEXTS.values() for t in domain_texts]  # mtl: all
        return [{"prompt": "Text:", "completion": text} for text in texts[:n]]

    def train(self, base_dir: Path, out_dir: Path, *, seed: int, work_dir: Path) -> dict:
        import shutil

        import torch

        generator = torch.Generator().manual_seed(seed * 1000 + zlib.crc32(self.spec.domain.encode()) % 1000)
        base = CheckpointReader(base_dir)
        writer = ShardedWriter(out_dir)
        for name in base.names():
            tensor = base.get(name).float()
            mask = torch.rand(tensor.shape, generator=generator) < self.density
            noise = torch.randn(tensor.shape, generator=generator) * (tensor.std() if tensor.numel() > 1 else 1.0) * self.scale
            writer.add(name, (tensor + noise * mask).to(base.get(name).dtype))
        writer.close()
        shutil.copy2(base_dir / "config.json", out_dir / "config.json")
        copy_tokenizer_files(base_dir, out_dir)
        return {"synthetic": True}
