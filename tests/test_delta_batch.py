"""Variants ``base + λ·Δ`` decoded in shared passes give what each variant's own weights give."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from mergebench.evaluation.api import GenerationRequest, LoglikelihoodRequest  # noqa: E402
from mergebench.evaluation.hf import HFLanguageModel  # noqa: E402
from mergebench.search.shared_decoding import DeltaBatch, NotAffine, Variant  # noqa: E402
from tests.helpers import load_tensors  # noqa: E402

PROMPTS = [GenerationRequest("abc", 12), GenerationRequest("hello world, this is", 7), GenerationRequest("x", 9)]
SCORED = [LoglikelihoodRequest("the cat", " sat"), LoglikelihoodRequest("1 2 3", " 4 5")]


def task(lm):
    """A task with three calls: two generation rounds around a log-likelihood round."""
    first = lm.generate(PROMPTS)
    scored = [(r.logprob, r.n_tokens, r.is_greedy) for r in lm.loglikelihood(SCORED)]
    second = lm.generate([GenerationRequest(p.prompt + text, 5) for p, text in zip(PROMPTS, first)])
    return first, scored, second


def deltas_for(path, seeds):
    """Random task vectors on every tensor (norms and embeddings too), one per group."""
    base = load_tensors(path)
    out = {}
    for group, seed in seeds.items():
        generator = torch.Generator().manual_seed(seed)
        out[group] = {name: 0.3 * torch.randn(t.shape, generator=generator) for name, t in base.items()}
    return base, out


def reference(path, base, delta, scale):
    """The variant on its own: weights ``base + scale · delta`` loaded into a fresh model."""
    lm = HFLanguageModel.from_pretrained(path, batch_size=2)
    lm.model.load_state_dict({name: base[name] + scale * delta[name] for name in delta}, strict=False)
    return task(lm)


def assert_each_as_alone(batch, variants, results):
    """Each result equals the task run on the variant's own weights written into the same model."""
    for variant, got in zip(variants, results):
        batch.materialize(variant)
        assert got == task(batch.lm)
        batch.restore()


@pytest.mark.parametrize("family", ["tiny_llama", "tiny_gemma2"])
def test_shared_decoding_reproduces_every_variant(family, request):
    path = request.getfixturevalue(family)
    base, deltas = deltas_for(path, {"a": 1, "b": 2})
    variants = [Variant("a", 0.5), Variant("b", 1.0), Variant("a", 0.0), Variant("a", 1.3)]
    lm = HFLanguageModel.from_pretrained(path, batch_size=2)
    calls = []
    original = lm.generate
    lm.generate = lambda requests, **kw: calls.append(len(requests)) or original(requests, **kw)

    results = DeltaBatch(lm, base, deltas).evaluate(variants, task)

    assert calls == [12, 12], "each generation round should be one call over every variant's rows"
    for variant, got in zip(variants, results):
        assert got == reference(path, base, deltas[variant.group], variant.scale)
    assert all(torch.equal(p, base[n]) for n, p in lm.model.named_parameters()), "base weights not restored"


def test_a_layer_not_affine_in_its_weights_fails_the_check_and_variants_decode_alone(tiny_llama, monkeypatch):
    base, deltas = deltas_for(tiny_llama, {"a": 3})
    lm = HFLanguageModel.from_pretrained(tiny_llama, batch_size=2)
    proj = lm.model.model.layers[0].mlp.down_proj
    monkeypatch.setattr(proj, "forward", lambda x: torch.nn.functional.linear(x, proj.weight ** 2))  # not affine
    batch = DeltaBatch(lm, base, deltas)
    with pytest.raises(NotAffine, match="differs from the variant's own logits"):
        batch.check(Variant("a", 0.5))

    variants = [Variant("a", 0.5), Variant("a", 1.0), Variant("a", 1.5)]
    results = batch.evaluate(variants, task)

    assert batch.sharing is False
    assert_each_as_alone(batch, variants, results)


def test_an_error_in_one_variants_task_reaches_the_caller_and_weights_are_restored(tiny_llama):
    base, deltas = deltas_for(tiny_llama, {"a": 4})
    lm = HFLanguageModel.from_pretrained(tiny_llama, batch_size=2)

    def failing(model):
        task(model)
        if model is not None and failing.calls == 1:
            raise ValueError("surrogate data is missing")
        failing.calls += 1

    failing.calls = 0
    with pytest.raises(ValueError, match="surrogate data is missing"):
        DeltaBatch(lm, base, deltas).evaluate([Variant("a", 0.5), Variant("a", 1.0), Variant("a", 2.0)], failing)
    assert all(torch.equal(p, base[n]) for n, p in lm.model.named_parameters())


def test_variants_that_would_read_more_weights_together_than_apart_decode_alone(tiny_llama):
    """Three variants in three groups: a shared step reads base + 3 Δ, apart they read 3 models."""
    base, deltas = deltas_for(tiny_llama, {"a": 5, "b": 6, "c": 7})
    variants = [Variant("a", 0.5), Variant("b", 0.5), Variant("c", 0.5)]
    lm = HFLanguageModel.from_pretrained(tiny_llama, batch_size=2)
    calls = []
    original = lm.generate
    lm.generate = lambda requests, **kw: calls.append(len(requests)) or original(requests, **kw)

    batch = DeltaBatch(lm, base, deltas)
    results = batch.evaluate(variants, task)

    assert calls == [3] * 6 and batch.sharing is None  # two generation rounds, one call per variant each
    for variant, got in zip(variants, results):
        assert got == reference(tiny_llama, base, deltas[variant.group], variant.scale)


def test_a_round_shows_one_bar_for_its_points_not_one_per_point_and_call(tiny_llama):
    import contextlib

    from mergebench import progress

    class Recording(progress.NullSink):
        def __init__(self):
            self.bars = []
            self.inner = progress.NullSink()

        @contextlib.contextmanager
        def bar(self, description, total, unit):
            self.bars.append((description, total, unit))
            with self.inner.bar(description, total, unit) as bar:
                yield bar

    base, deltas = deltas_for(tiny_llama, {"a": 8})
    lm = HFLanguageModel.from_pretrained(tiny_llama, batch_size=2, name="tiny")
    sink = Recording()
    with progress.use_sink(sink):
        DeltaBatch(lm, base, deltas).evaluate([Variant("a", s) for s in (0.5, 1.0, 1.5)], task)
    assert sink.bars == [("generate (tiny)", 9, "items"), ("score 3 points (tiny)", 3, "points"),
                         ("generate (tiny)", 9, "items")]


def test_a_norm_that_refuses_a_weight_per_row_takes_the_generic_update(tiny_llama, monkeypatch):
    """Norms are called once with each row's own weight; one that checks its weight's shape
    (``layer_norm``) falls back to ``λ · (f(x; Δ) − f(x; 0))`` and still decodes every variant as alone."""
    base, deltas = deltas_for(tiny_llama, {"a": 8, "b": 9})
    lm = HFLanguageModel.from_pretrained(tiny_llama, batch_size=2)
    norm = lm.model.model.norm
    width = norm.weight.shape[0]
    monkeypatch.setattr(norm, "forward", lambda x: torch.nn.functional.layer_norm(x, (width,), norm.weight))
    variants = [Variant("a", 0.5), Variant("b", 1.0), Variant("a", 1.5), Variant("b", 0.25)]
    batch = DeltaBatch(lm, base, deltas)
    results = batch.evaluate(variants, task)

    assert batch.sharing is True
    assert_each_as_alone(batch, variants, results)


def test_a_norm_refusing_a_weight_per_row_is_asked_once_then_takes_the_generic_update(monkeypatch):
    """``layer_norm`` checks its weight's shape: the first pass finds out, later passes go straight to the fallback."""
    from mergebench.search.row_updates import RowWeightedUpdate, update_for

    norm = torch.nn.LayerNorm(8)
    update = update_for(norm, {"weight": "norm.weight", "bias": "norm.bias"})
    assert isinstance(update, RowWeightedUpdate) and not update.refused
    tries = []
    original = update._with_row_weights
    monkeypatch.setattr(update, "_with_row_weights", lambda *args: tries.append(1) or original(*args))
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 8, generator=generator)
    delta = {"norm.weight": torch.randn(8, generator=generator), "norm.bias": torch.randn(8, generator=generator)}
    scales = torch.tensor([0.5, 1.0, 2.0])
    with torch.no_grad():
        own = torch.stack([torch.nn.functional.layer_norm(x[i], (8,), norm.weight + s * delta["norm.weight"],
                                                          norm.bias + s * delta["norm.bias"]) for i, s in enumerate(scales)])
        for _ in range(2):
            out = update.apply((x,), [("a", 0, 3, scales)], {"a": delta}, norm(x))
            assert update.refused and tries == [1]
            torch.testing.assert_close(out, own)
