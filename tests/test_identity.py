"""The one identity of a checkpoint folder we did not build (hub bases and experts, --mb-checkpoint, CLI statistics)."""

from __future__ import annotations

import os
import shutil

from mergebench.checkpoint.identity import checkpoint_identity

MTIME_NS = 1_700_000_000_000_000_000


def checkpoint(folder):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "model.safetensors").write_text("weights")
    os.utime(folder / "model.safetensors", ns=(MTIME_NS, MTIME_NS))
    return folder


def test_a_hub_snapshot_is_its_commit(tmp_path):
    commit = "0123456789abcdef0123456789abcdef01234567"
    assert checkpoint_identity(checkpoint(tmp_path / "snapshots" / commit)) == f"hub-commit:{commit}"


def test_a_folder_is_its_config_and_weight_files_wherever_it_lies(tmp_path):
    first = checkpoint(tmp_path / "a")
    # the digest the pipeline gave such a folder before the identity had one home: hub bases keep their keys
    assert checkpoint_identity(first) == "22fb22953edb41e92baf3aa122ca4602dd9979c8818b8dd13cb52cbc8632329d"
    moved = shutil.copytree(first, tmp_path / "elsewhere" / "b")  # copy2 keeps the mtime
    assert checkpoint_identity(moved) == checkpoint_identity(first)
    (moved / "model.safetensors").write_text("weights")  # rewritten, same size: a new mtime
    assert checkpoint_identity(moved) != checkpoint_identity(first)
