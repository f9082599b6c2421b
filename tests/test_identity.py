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


LOADER_FILES = ("model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                "tokenizer.model", "vocab.json", "merges.txt", "chat_template.jinja", "generation_config.json",
                "additional_chat_templates/tool_use.jinja", "pytorch_model.bin.index.json")


def test_every_file_a_loader_reads_is_part_of_the_identity(tmp_path):
    """Weights, the index, the tokenizer, the chat template, the generation config: editing any one
    gives a folder a new identity, and two folders that differ only there never share statistics."""
    reference = checkpoint(tmp_path / "reference")
    for name in LOADER_FILES:
        (reference / name).parent.mkdir(exist_ok=True)
        (reference / name).write_text(f"the original {name}")
    original = checkpoint_identity(reference)
    for name in LOADER_FILES:
        edited = shutil.copytree(reference, tmp_path / "edited" / name.replace("/", "_"))
        assert checkpoint_identity(edited) == original, "a copy keeps its identity"
        (edited / name).write_text(f"an edited {name}")
        assert checkpoint_identity(edited) != original, name
        (edited / name).unlink()
        assert checkpoint_identity(edited) != original, f"{name} removed"


def test_pickled_weights_are_part_of_the_identity_by_size_and_time(tmp_path):
    folder = checkpoint(tmp_path / "pickled")
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"pickle")
    os.utime(folder / "pytorch_model.bin", ns=(MTIME_NS, MTIME_NS))
    first = checkpoint_identity(folder)
    (folder / "pytorch_model.bin").write_bytes(b"pickle")  # rewritten: a new mtime
    assert checkpoint_identity(folder) != first
    os.utime(folder / "pytorch_model.bin", ns=(MTIME_NS, MTIME_NS))
    assert checkpoint_identity(folder) == first
    (folder / "pytorch_model-00002-of-00002.bin").write_bytes(b"a second shard")
    assert checkpoint_identity(folder) != first


def test_files_no_loader_reads_leave_the_identity_alone(tmp_path):
    folder = checkpoint(tmp_path / "a")
    before = checkpoint_identity(folder)
    (folder / "README.md").write_text("a model card")
    (folder / "training_args.txt").write_text("notes")
    assert checkpoint_identity(folder) == before
