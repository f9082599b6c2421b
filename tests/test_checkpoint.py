"""Checkpoint reading and writing, and the errors for broken or unsafe checkpoints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from mergebench.checkpoint import CheckpointReader, ShardedWriter
from mergebench.errors import CheckpointError
from tests.helpers import load_tensors


def test_sharded_write_then_read_round_trips(tmp_path: Path):
    tensors = {f"layer.{i}.weight": torch.arange(i * 10, i * 10 + 64, dtype=torch.float32).reshape(8, 8) for i in range(5)}
    writer = ShardedWriter(tmp_path, max_shard_bytes=600, metadata={"mergebench_key": "abc"})
    for name, tensor in tensors.items():
        writer.add(name, tensor)
    shards = writer.close()
    assert len(shards) == 3  # 256 bytes a tensor, at most 600 a shard: 2 + 2 + 1
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(tensors)
    reader = CheckpointReader(tmp_path)
    for name, tensor in tensors.items():
        assert torch.equal(reader.get(name), tensor)
        assert reader.shape(name) == (8, 8)
    assert reader.metadata()["mergebench_key"] == "abc"
    assert not list(tmp_path.glob(".shard-*"))


@pytest.mark.parametrize("max_shard_bytes", [600, 10_000])
def test_a_writer_given_the_layout_writes_the_same_files_without_a_spill(tmp_path: Path, max_shard_bytes: int):
    tensors = {f"layer.{i}.weight": torch.arange(i * 10, i * 10 + 64, dtype=torch.float32).reshape(8, 8) for i in range(5)}
    tensors["norm.weight"] = torch.arange(6, dtype=torch.bfloat16)
    layout = [(name, str(t.dtype), tuple(t.shape)) for name, t in tensors.items()]
    written = {}
    for mode, kwargs in (("spill", {}), ("direct", {"layout": layout})):
        writer = ShardedWriter(tmp_path / mode, max_shard_bytes=max_shard_bytes, metadata={"k": "v"}, **kwargs)
        for name, tensor in tensors.items():
            writer.add(name, tensor)
            assert not list((tmp_path / mode).glob("*.data.tmp")) or mode == "spill"
        writer.close()
        written[mode] = (sorted(p.name for p in (tmp_path / mode).iterdir()), writer.hashes)
        for path in (tmp_path / mode).glob("*.safetensors"):
            written[mode] += (path.read_bytes(),)
    assert written["direct"] == written["spill"]  # same names, bytes and SHA-256s
    assert len(written["spill"][0]) == (4 if max_shard_bytes == 600 else 1)  # 3 shards and an index, or one file


def test_a_writer_given_the_layout_refuses_a_tensor_out_of_it(tmp_path: Path):
    layout = [("a", "F32", (2,)), ("b", "F32", (3,))]
    writer = ShardedWriter(tmp_path / "order", layout=layout)
    with pytest.raises(ValueError, match="tensor 'b' \\(F32 \\[3\\]\\) does not come where the layout expects 'a'"):
        writer.add("b", torch.zeros(3))
    writer = ShardedWriter(tmp_path / "shape", layout=layout)
    with pytest.raises(ValueError, match="expects 'a' \\(F32 \\[2\\]\\)"):
        writer.add("a", torch.zeros(4))
    writer = ShardedWriter(tmp_path / "short", layout=layout)
    writer.add("a", torch.zeros(2))
    with pytest.raises(ValueError, match="1 tensors of the layout were never added \\(first: 'b'\\)"):
        writer.close()


def test_a_truncated_shard_is_named_with_the_fix(tiny_llama: Path, tmp_path: Path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_llama, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"model.safetensors is not a readable safetensors file .*truncated or corrupt.*delete"):
        CheckpointReader(broken)


def test_a_missing_shard_listed_in_the_index(tmp_path: Path):
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors"}}))
    with pytest.raises(CheckpointError, match="shard model-00001-of-00002.safetensors listed in model.safetensors.index.json is missing"):
        CheckpointReader(tmp_path)


def test_pickle_weights_need_an_explicit_opt_in(tmp_path: Path):
    torch.save({"w": torch.ones(2)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="only pickle weights .*--allow-pickle"):
        CheckpointReader(tmp_path)
    assert torch.equal(CheckpointReader(tmp_path, allow_pickle=True).get("w"), torch.ones(2))


def test_no_weights_at_all(tmp_path: Path):
    with pytest.raises(CheckpointError, match=r"no model weights \(\*.safetensors\)"):
        CheckpointReader(tmp_path)


def test_tiny_model_has_the_tensors_we_expect(tiny_llama: Path):
    names = set(load_tensors(tiny_llama))
    assert "model.embed_tokens.weight" in names and "lm_head.weight" in names


def truncated_copy(source: Path, out: Path, cut: int = 100) -> Path:
    shutil.copytree(source, out)
    weights = out / "model.safetensors"
    with open(weights, "r+b") as handle:
        handle.truncate(weights.stat().st_size - cut)
    return out


def test_check_safetensors_names_a_truncated_shard_before_transformers_sees_it(tiny_llama: Path, tmp_path: Path):
    from mergebench.checkpoint.reader import check_safetensors
    from mergebench.evaluation.hf import load_model

    assert check_safetensors(tiny_llama) == [tiny_llama / "model.safetensors"]
    broken = truncated_copy(tiny_llama, tmp_path / "broken", cut=1)  # one byte short: the header still parses
    for call in (check_safetensors, load_model):
        with pytest.raises(CheckpointError, match=r"broken/model.safetensors is not a readable safetensors file .*"
                                                  r"truncated or corrupt.*delete"):
            call(broken)
    (tmp_path / "pickles").mkdir()
    assert check_safetensors(tmp_path / "pickles") == []  # nothing to check: the loader says what is missing


def mapped_rss_kib(path: Path) -> int:
    """Resident KiB of this process's mappings of ``path`` (/proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if line[:1].isdigit() or line[:1] in "abcdef" and "-" in line.split()[0]:
            inside = line.rstrip().endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="needs Linux's /proc/self/smaps")
def test_mapped_entries_read_the_stored_values_and_unmapping_drops_their_pages(tmp_path: Path):
    tensors = {"small": torch.arange(10, dtype=torch.float32),
               "big": torch.arange(300_000, dtype=torch.float32).to(torch.bfloat16)}
    writer = ShardedWriter(tmp_path)
    for name, tensor in tensors.items():
        writer.add(name, tensor)
    writer.close()
    reader = CheckpointReader(tmp_path)
    shard = tmp_path / "model.safetensors"
    before = mapped_rss_kib(shard)  # the safetensors library's own map of the header
    assert reader.mapped_elements("small", 7, 3, "float32").tolist() == [7.0, 8.0, 9.0]
    big = reader.mapped_elements("big", 1000, 250_000, "uint16")
    assert big.tolist() == tensors["big"].view(torch.int16).numpy().view("uint16")[1000:251_000].tolist()
    assert mapped_rss_kib(shard) >= before + 250_000 * 2 // 1024  # read through the map: its pages are resident
    reader.unmap_elements("big", 0, 300_000)
    assert mapped_rss_kib(shard) == before  # every page under "big", the one it shares with "small" included
    assert big[-1] == tensors["big"].view(torch.int16)[250_999].item() & 0xFFFF  # a dropped page reads again
    with pytest.raises(CheckpointError, match="past the end of tensor 'small'"):
        reader.mapped_elements("small", 8, 3, "float32")
    del big
    reader.close()
