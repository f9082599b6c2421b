"""The torch-free merge (mergebench.merging.plain) against the torch engine, byte for byte."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from mergebench import plugin_manager
from mergebench.checkpoint import CheckpointReader
from mergebench.errors import CheckpointError
from mergebench.merging import plain
from mergebench.merging.api import MergeContext
from mergebench.merging.engine import merge_checkpoints, open_inputs
from tests.helpers import load_tensors, write_variant

LAYER = "model.layers.0.mlp.up_proj.weight"


def method(name: str):
    return plugin_manager.registries().methods.get(name)


@pytest.fixture(autouse=True)
def small_pieces(monkeypatch):
    """Pieces of 512 entries and torch's row blocks from 4096: every tensor crosses both kinds of boundary."""
    from mergebench_builtins.methods import gta

    monkeypatch.setattr(plain, "CHUNK", 512)
    monkeypatch.setattr(gta, "HOLD_ELEMENTS", 4096)


def quantized_experts(tiny_llama, root, dtype, count=4, expert_dtype=None):
    """Base and experts in ``dtype`` whose task vectors repeat magnitudes (ties at every threshold), hold exact
    zeros (an expert equal to the base) and signed zeros in the stored values."""
    base = {k: v.to(dtype) for k, v in load_tensors(tiny_llama).items()}
    base["model.norm.weight"][:4] = torch.tensor([0.0, -0.0, 0.0, -0.0])
    experts = {}
    for i in range(count):
        generator = torch.Generator().manual_seed(7 + i)
        tensors = {}
        for name, value in base.items():
            steps = torch.randint(-3, 4, value.shape, generator=generator).float()
            tensors[name] = (value.float() + 0.01 * steps * value.float().abs().mean()).to(expert_dtype or dtype)
            tensors[name].view(-1)[:5] = value.view(-1)[:5].to(expert_dtype or dtype)  # τ = 0 there
        experts[f"e{i}"] = write_variant(tiny_llama, root / f"e{i}", tensors)
    return write_variant(tiny_llama, root / "base", base), experts


def merge_without_torch(monkeypatch, name, params, base, experts, out, **kwargs) -> None:
    """merge_checkpoints into ``out``, failing unless the torch-free path (``plain.merged_bytes``) merged it."""
    from mergebench.merging import engine

    used = []
    monkeypatch.setattr(engine, "merged_bytes", lambda *a, _f=plain.merged_bytes: used.append(1) or _f(*a))
    merge_checkpoints(method(name), params, base, experts, out, **kwargs)
    assert used, "the torch-free path did not run"


def files(directory):
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


CASES = [
    ("task_arithmetic", {"scaling": 1.0}),
    ("task_arithmetic", {"scaling": 0.3}),
    ("task_arithmetic", {"scaling": 1 / 3}),
    ("ties", {"density": 0.2, "scope": "tensor"}),
    ("ties", {"density": 0.5, "scope": "tensor", "scaling": 0.7}),
    ("ties", {"density": 1.0, "scope": "tensor"}),
    ("ties", {"density": 0.01, "scope": "tensor", "scaling": 1.3}),
]


@pytest.mark.parametrize("dtypes", [(torch.bfloat16, None), (torch.float32, None), (torch.bfloat16, torch.float32)],
                         ids=["bf16", "f32", "bf16-base-f32-experts"])
@pytest.mark.parametrize(("name", "params"), CASES)
def test_the_torch_free_merge_writes_the_torch_engines_bytes(tiny_llama, tmp_path, dtypes, name, params, monkeypatch):
    base, experts = quantized_experts(tiny_llama, tmp_path, dtypes[0], expert_dtype=dtypes[1])
    context = MergeContext(exclude=(), threads=2)
    merge_checkpoints(method(name), params, base, experts, tmp_path / "torch", context=context, allow_plain=False)
    merge_without_torch(monkeypatch, name, params, base, experts, tmp_path / "plain", context=context)
    assert files(tmp_path / "plain") == files(tmp_path / "torch")


@pytest.mark.parametrize("bracket", ["missed", "everything", "high-only", "high-end"])
def test_ties_merges_the_same_bytes_whatever_the_sample_brackets(tiny_llama, tmp_path, monkeypatch, bracket):
    """A bracket that misses the threshold (found by partition, merged again), one that holds every entry (all merged
    again), one at a single value (nothing merged again when the threshold is that value) and one whose high end
    is the threshold (the entries below it merged again, and dropped)."""
    from mergebench.merging import plain_topk

    def fake(sample, share):
        sample.sort()
        if bracket == "missed":
            return sample[-1], sample[-1]
        if bracket == "everything":
            return sample[0], sample[-1]
        if bracket == "high-end":
            return sample[0], sample[int(len(sample) * (1 - share))]
        return (sample[int(len(sample) * (1 - share))],) * 2

    base, experts = quantized_experts(tiny_llama, tmp_path, torch.bfloat16)
    params = {"density": 0.3, "scope": "tensor", "scaling": 0.9}
    merge_checkpoints(method("ties"), params, base, experts, tmp_path / "torch", allow_plain=False)
    monkeypatch.setattr(plain_topk, "_bracket", fake)
    merge_checkpoints(method("ties"), params, base, experts, tmp_path / "plain")
    assert files(tmp_path / "plain") == files(tmp_path / "torch")


def test_an_input_with_nan_takes_the_torch_engine_and_its_error(tiny_llama, tmp_path):
    base, experts = quantized_experts(tiny_llama, tmp_path, torch.bfloat16, count=2)
    tensors = load_tensors(experts["e1"])
    tensors[LAYER][3, 5] = float("nan")
    experts["e1"] = write_variant(tiny_llama, tmp_path / "nan", tensors)
    for params in ({"density": 0.2, "scope": "tensor"}, {"density": 1.0, "scope": "tensor"}):
        with pytest.raises(CheckpointError, match=f"expert 'e1' has NaN or Inf values in tensor '{LAYER}'"):
            merge_checkpoints(method("ties"), params, base, experts, tmp_path / "out")


def test_an_overflow_is_merged_by_the_torch_engine(tiny_llama, tmp_path):
    """Finite inputs whose difference overflows: NaN/Inf bits are the torch engine's to define."""
    base, experts = quantized_experts(tiny_llama, tmp_path, torch.bfloat16, count=2)
    tensors = load_tensors(experts["e0"])
    tensors[LAYER][0, :3] = torch.tensor([3e38, -3e38, 3e38], dtype=torch.bfloat16)
    experts["e0"] = write_variant(tiny_llama, tmp_path / "big", tensors)
    tensors = load_tensors(base)
    tensors[LAYER][0, :3] = torch.tensor([-3e38, 3e38, 1.0], dtype=torch.bfloat16)
    base = write_variant(tiny_llama, tmp_path / "big-base", tensors)
    for name, params in CASES[:1] + CASES[3:4]:
        merge_checkpoints(method(name), params, base, experts, tmp_path / name / "torch", allow_plain=False)
        merge_checkpoints(method(name), params, base, experts, tmp_path / name / "plain")
        assert files(tmp_path / name / "plain") == files(tmp_path / name / "torch")


def test_what_the_torch_free_merge_cannot_do_exactly_stays_with_torch(tiny_llama, tiny_experts, tmp_path):
    base, experts = open_inputs(tiny_llama, tiny_experts)

    def form(name, params, context=None):
        context = context or MergeContext()
        spec = method(name)
        return plain.plain_form(spec.load()(spec.resolve_params(params), context), context, base, experts)

    assert form("task_arithmetic", {}) == plain.PlainForm(scaling=spec_default("task_arithmetic", "scaling"))
    assert form("ties", {"scope": "tensor", "density": 0.3}) == plain.PlainForm(scaling=1.0, density=0.3, consensus=True)
    assert form("ties", {"scope": "global"}) is None  # thresholds over the whole model
    assert form("ties", {"scope": "tensor", "merge_func": "sum"}) is None
    assert form("ties", {"scope": "tensor", "topk": "floor_plus_one"}) is None
    assert form("ties", {"scope": "tensor", "zero_sign": "majority"}) is None
    assert form("dare", {}) is None and form("soup", {}) is None
    assert form("task_arithmetic", {}, MergeContext(device="cuda")) is None
    tensors = load_tensors(tiny_experts["math"])
    tensors["model.embed_tokens.weight"] = torch.cat([tensors["model.embed_tokens.weight"], torch.zeros(3, 64)])
    bigger = write_variant(tiny_llama, tmp_path / "bigger", tensors, config_updates={"vocab_size": 262})
    experts = {"math": CheckpointReader(bigger)}
    assert form("task_arithmetic", {}, MergeContext(exclude=())) is None  # vocabularies to align
    assert form("task_arithmetic", {}) is not None  # ... unless the embeddings are not merged


def spec_default(name: str, key: str):
    return method(name).resolve_params({})[key]


def test_the_command_line_merges_without_importing_torch(tiny_llama, tmp_path):
    base, experts = quantized_experts(tiny_llama, tmp_path, torch.bfloat16, count=2)
    args = ["merge", "--method", "ties", "--base", str(base), "--param", "scope=tensor", "--out", str(tmp_path / "out"),
            *[f"--expert={label}={path}" for label, path in experts.items()]]
    script = ("import sys; from mergebench.cli import main; code = main(sys.argv[1:]); "
              "assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(code)")
    subprocess.run([sys.executable, "-c", script, *args], check=True, capture_output=True)
    merge_checkpoints(method("ties"), {"scope": "tensor"}, base, experts, tmp_path / "torch", allow_plain=False)
    merged = CheckpointReader(tmp_path / "out")
    assert all(torch.equal(merged.get(n).view(torch.int16), t.view(torch.int16))
               for n, t in load_tensors(tmp_path / "torch").items())


def test_the_writer_takes_stored_bytes_and_hashes_only_when_asked(tmp_path):
    import hashlib

    import numpy

    from mergebench.checkpoint import ShardedWriter

    layout = [("a", "BF16", (3, 4)), ("b", "F32", (5,))]
    data = {"a": numpy.arange(12, dtype=numpy.uint16), "b": numpy.linspace(0, 1, 5, dtype=numpy.float32)}
    writers = {}
    for hashed in (True, False):
        writer = writers[hashed] = ShardedWriter(tmp_path / str(hashed), layout=layout, max_shard_bytes=24, hashed=hashed)
        for name, dtype, shape in layout:
            writer.add_bytes(name, dtype, shape, memoryview(data[name]).cast("B"))
        writer.close()
    assert files(tmp_path / "True") == files(tmp_path / "False")
    shards = sorted(p.name for p in (tmp_path / "True").glob("*.safetensors"))
    assert len(shards) == 2 and all(writers[False].hashes.get(s) is None for s in shards)
    assert all(writers[True].hashes[s] == hashlib.sha256((tmp_path / "True" / s).read_bytes()).hexdigest() for s in shards)
    assert torch.equal(CheckpointReader(tmp_path / "False").get("b"), torch.from_numpy(data["b"]))
    with pytest.raises(ValueError, match="do not make a BF16 tensor"):
        ShardedWriter(tmp_path / "bad", layout=layout).add_bytes("a", "BF16", (3, 4), memoryview(b"12"))


@pytest.mark.parametrize("experts", [1, 2, 5, 300])
def test_the_election_and_disjoint_mean_are_the_torch_functions_bit_for_bit(experts):
    """Counted in bytes below 256 experts and in 32-bit integers from there; signs flipped on the bits."""
    import numpy

    from mergebench.merging.tensors import disjoint_merge, elected_sign, summed

    generator = torch.Generator().manual_seed(experts)
    taus = [torch.randint(-4, 5, (1000,), generator=generator).float() * 0.37 for _ in range(experts)]
    taus[0][:10] = -0.0  # signed zeros where every expert is zero
    for tau in taus[1:]:
        tau[:10] = 0.0
    for tau in taus:
        tau[-10:] = tau[-10:].abs() + 0.37  # every expert agrees: 300 of them would overflow a byte
    expected = disjoint_merge([t.clone() for t in taus], elected_sign(summed([t.clone() for t in taus])),
                              normalize=True)
    scratch = plain._Scratch(0, 1000)
    merged = plain._elect_and_merge([t.numpy().copy() for t in taus], scratch)
    assert merged.view(numpy.int32).tolist() == expected.view(torch.int32).tolist()


@pytest.mark.parametrize(("name", "params"), [("task_arithmetic", {"scaling": 0.3}),
                                              ("ties", {"density": 0.2, "scope": "tensor"})])
def test_sharded_inputs_merge_the_same_bytes_through_the_maps(tiny_llama, tmp_path, name, params, monkeypatch):
    """Inputs split over several shards, each mapped on its own: entries are found at their shard's offsets."""
    from mergebench.checkpoint import ShardedWriter

    base, experts = quantized_experts(tiny_llama, tmp_path / "single", torch.bfloat16, count=3)
    sharded = {}
    for label, source in {"base": base, **experts}.items():
        reader, target = CheckpointReader(source), tmp_path / "sharded" / label
        writer = ShardedWriter(target, max_shard_bytes=reader.total_bytes() // 5)
        for tensor in reversed(reader.names()):  # another order than the single file's, too
            writer.add(tensor, reader.get(tensor))
        writer.close()
        for extra in source.iterdir():
            if extra.suffix != ".safetensors" and extra.is_file():
                (target / extra.name).write_bytes(extra.read_bytes())
        sharded[label] = target
    assert len(list(sharded["base"].glob("*.safetensors"))) > 3
    base = sharded.pop("base")
    merge_checkpoints(method(name), params, base, sharded, tmp_path / "torch", allow_plain=False)
    merge_without_torch(monkeypatch, name, params, base, sharded, tmp_path / "plain")
    assert files(tmp_path / "plain") == files(tmp_path / "torch")
