"""Built-in merge methods. Each method is one module; this file declares their specs.

Grids are the study's Table 7 (MergeBench, He et al. 2025, Appendix C.2) for its nine methods;
the methods beyond the study get a small grid around their papers' defaults (marked "ours") and are
opt-in: they run when named (``--mb-methods slerp``) or with ``--mb-methods all``. ``linear`` and
``mergekit_gta`` (mergekit configs' counterparts) run only when named or configured: at their
defaults they repeat the soup and Task Arithmetic at λ = 1.
Shared parameter names: ``scaling`` (λ), ``density`` (fraction of task-vector entries kept),
``scope`` (``global`` or ``tensor`` top-k), ``p`` (DARE's drop probability); random methods take
their seed from the merge context (``--seed``). A spec declares no data needs: ``MethodSpec.data``
derives them from the method's class (its statistic) and the grids here.
"""

from __future__ import annotations

from mergebench import hookimpl
from mergebench.specs import HyperParam, MethodSpec

LAMBDA_GRID = tuple(round(0.1 * i, 1) for i in range(1, 11))
SCOPES = ("global", "tensor")
PKG = "mergebench_builtins.methods"


def scaling(default: float = 0.3, grid: tuple = LAMBDA_GRID) -> HyperParam:
    return HyperParam("scaling", default, grid=grid, low=0.0, high=10.0,
                      doc="λ, the coefficient of the merged task vector")


def density(default: float, grid: tuple = (), doc: str = "fraction of each task vector's entries kept") -> HyperParam:
    return HyperParam("density", default, grid=grid, low=0.0, high=1.0, doc=doc)


def scope(default: str) -> HyperParam:
    return HyperParam("scope", default, choices=SCOPES,
                      doc="top-k over the whole model per expert (global, the study's) or per tensor (mergekit's)")


def samples(default: int = 1000) -> HyperParam:
    return HyperParam("samples", default, low=1, high=1_000_000,
                      doc="training samples per expert for the statistics (the study uses 1,000)")


MERGEKIT_SPARSIFIERS = ("none", "magnitude", "magnitude_outliers", "random", "della_magprune")
MERGEKIT_CONSENSUS = ("none", "sum", "count")


def per_expert_param(name: str, doc: str) -> HyperParam:
    return HyperParam(name, "", doc=f"{doc}, as LABEL=VALUE,... naming every expert")


def method_specs() -> list[MethodSpec]:
    return [
        MethodSpec(
            name="soup", impl=f"{PKG}.soup:Soup", family="coefficient",
            summary="Element-wise mean of the finetuned models.",
            reference_url="https://arxiv.org/abs/2203.05482",
        ),
        MethodSpec(
            name="task_arithmetic", impl=f"{PKG}.task_arithmetic:TaskArithmetic", family="coefficient",
            hyperparams=(scaling(),),
            summary="Base plus λ times the sum of task vectors.",
            reference_url="https://arxiv.org/abs/2212.04089",
        ),
        MethodSpec(
            name="fisher", impl=f"{PKG}.fisher:Fisher", family="coefficient",
            hyperparams=(samples(),),
            summary="Average weighted entry by entry by each expert's diagonal Fisher information.",
            reference_url="https://arxiv.org/abs/2111.09832",
        ),
        MethodSpec(
            name="regmean", impl=f"{PKG}.regmean:RegMean", family="coefficient",
            hyperparams=(
                HyperParam("alpha", 0.9, grid=(0.1, 0.3, 0.5, 0.7, 0.9), low=0.0, high=1.0,
                           doc="scale of the Gram matrices' off-diagonal entries (the study's 'reduction')"),
                samples(),
            ),
            summary="Linear layers solved to reproduce every expert's outputs on its inputs (Gram matrices).",
            reference_url="https://arxiv.org/abs/2212.09849",
        ),
        MethodSpec(
            name="ties", impl=f"{PKG}.ties:Ties", family="sparsification",
            hyperparams=(scaling(1.0), density(0.2, (0.1, 0.2, 0.3)), scope("global")),
            summary="Trim task vectors to their top-k magnitudes, elect signs, average the agreeing entries.",
            reference_url="https://arxiv.org/abs/2306.01708",
        ),
        MethodSpec(
            name="dare", impl=f"{PKG}.dare:Dare", family="sparsification",
            hyperparams=(
                scaling(1.0),
                HyperParam("p", 0.8, grid=(0.7, 0.8, 0.9), low=0.0, high=0.999,
                           doc="drop probability; the study's sparsity s ∈ {0.1, 0.2, 0.3} kept is p = 1 − s"),
            ),
            summary="Drop task-vector entries at random with probability p, rescale by 1/(1−p), add.",
            reference_url="https://arxiv.org/abs/2311.03099",
        ),
        MethodSpec(
            name="consensus", impl=f"{PKG}.consensus:Consensus", family="sparsification", min_experts=2,
            hyperparams=(
                scaling(1.0),
                HyperParam("mask_lambda", 0.5, grid=(0.2, 0.3, 0.4, 0.5, 0.6), low=0.0, high=100.0,
                           doc="λ_c of the TALL masks |τ_i| ≥ λ_c |τ_MTL − τ_i|"),
                HyperParam("k", 2, low=1, high=1000, doc="how many task masks must agree"),
            ),
            summary="Task arithmetic restricted to entries that at least k tasks' TALL masks select.",
            reference_url="https://arxiv.org/abs/2405.07813",
        ),
        MethodSpec(
            name="localize_stitch", impl=f"{PKG}.localize_stitch:LocalizeStitch", family="sparsification",
            hyperparams=(
                density(0.1, doc="fraction of entries in each mask's initialization"),
                HyperParam("sigmoid_bias", 3.0, low=0.0, high=100.0, doc="initial mask logits ±bias"),
                HyperParam("lr", 1e8, low=0.0, doc="SGD learning rate of the mask logits"),
                HyperParam("epochs", 1, low=1, high=100, doc="passes over the samples"),
                HyperParam("l1", 0.0, low=0.0, doc="L1 penalty on the relaxed mask"),
                samples(),
            ),
            summary="Masks trained on each expert's samples localize its skill; the regions are stitched.",
            reference_url="https://arxiv.org/abs/2408.13656",
        ),
        MethodSpec(
            name="dataless_localize_stitch", impl=f"{PKG}.dataless_localize_stitch:DatalessLocalizeStitch",
            family="sparsification",
            hyperparams=(density(0.1, (0.1, 0.2, 0.3, 0.4, 0.5)), scope("global")),
            summary="Each expert's top-k task-vector entries are stitched onto the base, overlaps averaged.",
            reference_url="https://arxiv.org/abs/2408.13656",
        ),
        MethodSpec(
            name="slerp", opt_in=True, impl=f"{PKG}.slerp:Slerp", family="other", min_experts=2, max_experts=2,
            hyperparams=(HyperParam("t", 0.5, grid=(0.3, 0.5, 0.7), low=0.0, high=1.0,
                                    doc="interpolation position: 0 = first expert, 1 = second (grid ours)"),),
            summary="Spherical interpolation between two experts, tensor by tensor.",
            reference_url="https://en.wikipedia.org/wiki/Slerp",
        ),
        MethodSpec(
            name="della", opt_in=True, impl=f"{PKG}.della:Della", family="sparsification",
            hyperparams=(
                scaling(1.0),
                density(0.2, (0.1, 0.2, 0.3)),
                HyperParam("epsilon", 0.1, grid=(0.05, 0.1), low=0.0, high=0.5,
                           doc="spread of keep probabilities around density (grid ours)"),
            ),
            summary="Magnitude-ranked random drop with rescaling, then TIES' sign election and mean.",
            reference_url="https://arxiv.org/abs/2406.11617",
        ),
        MethodSpec(
            name="breadcrumbs", opt_in=True, impl=f"{PKG}.breadcrumbs:Breadcrumbs", family="sparsification",
            hyperparams=(
                scaling(1.0),
                density(0.9, (0.8, 0.9)),
                HyperParam("gamma", 0.01, grid=(0.01, 0.02), low=0.0, high=1.0,
                           doc="fraction of largest-magnitude outliers dropped (grid ours)"),
                scope("tensor"),
            ),
            summary="Drop the smallest entries and the largest outliers of each task vector, then add.",
            reference_url="https://arxiv.org/abs/2312.06795",
        ),
        MethodSpec(
            name="model_stock", opt_in=True, impl=f"{PKG}.model_stock:ModelStock", family="other", min_experts=2,
            summary="Move from the base towards the experts' mean by a ratio set by the angle between them.",
            reference_url="https://arxiv.org/abs/2403.19522",
        ),
        MethodSpec(
            name="linear", opt_in=True, in_all=False, impl=f"{PKG}.linear:Linear", family="coefficient",
            hyperparams=(per_expert_param("weights", "each expert's weight (default 1 each)"),
                         HyperParam("normalize", True, doc="divide by the sum of the weights")),
            summary="Weighted average of whole models, one weight per expert (mergekit's linear).",
            reference_url="https://arxiv.org/abs/2203.05482",
        ),
        MethodSpec(
            name="mergekit_gta", opt_in=True, in_all=False, impl=f"{PKG}.mergekit_gta:MergekitGTA", family="sparsification",
            hyperparams=(
                HyperParam("scaling", 1.0, doc="λ, mergekit's lambda: the coefficient of the merged task vector"),
                HyperParam("sparsify", "none", choices=MERGEKIT_SPARSIFIERS,
                           doc="per-tensor sparsifier: none (task arithmetic), magnitude (TIES), "
                               "magnitude_outliers (Breadcrumbs), random (DARE), della_magprune (DELLA)"),
                HyperParam("consensus", "none", choices=MERGEKIT_CONSENSUS,
                           doc="sign election: none, sum (TIES: the sign of the summed deltas), count (majority of signs)"),
                per_expert_param("weights", "each expert's weight w_i (default 1 each)"),
                per_expert_param("densities", "each expert's density, the fraction kept (default 1 each)"),
                per_expert_param("gammas", "each expert's outlier fraction for magnitude_outliers (default 0.01 each)"),
                per_expert_param("epsilons", "each expert's keep-probability spread for della_magprune (default 0.15 each)"),
                HyperParam("normalize", False, doc="divide by the summed weights of the (agreeing) experts"),
                HyperParam("rescale", False, doc="rescale each sparsified task vector to its L1 norm"),
            ),
            summary="mergekit's generalized task arithmetic (task_arithmetic, ties, dare_*, breadcrumbs*, della*) "
                    "with per-expert weights and densities.",
            reference_url="https://github.com/arcee-ai/mergekit",
        ),
        MethodSpec(
            name="tsv", opt_in=True, impl=f"{PKG}.tsv:TaskSingularVectors", family="other",
            hyperparams=(scaling(1.0, (0.5, 0.75, 1.0, 1.25, 1.5)),),
            summary="Each task's top singular directions, decorrelated across tasks (TSV-Merge).",
            reference_url="https://arxiv.org/abs/2412.00081",
        ),
        MethodSpec(
            name="iso_c", opt_in=True, impl=f"{PKG}.iso:IsoC", family="other",
            hyperparams=(scaling(1.0, (0.5, 1.0, 1.5, 2.0)),),
            summary="Summed task matrices with a flattened (isotropic) singular spectrum.",
            reference_url="https://arxiv.org/abs/2502.04959",
        ),
        MethodSpec(
            name="iso_cts", opt_in=True, impl=f"{PKG}.iso:IsoCTS", family="other",
            hyperparams=(
                scaling(1.0, (0.5, 1.0, 1.5, 2.0)),
                HyperParam("common_fraction", 0.8, low=0.0, high=1.0,
                           doc="share of the rank given to the common subspace (the paper's 0.8)"),
            ),
            summary="Isotropic merging in a common subspace plus task-specific subspaces.",
            reference_url="https://arxiv.org/abs/2502.04959",
        ),
    ]


@hookimpl
def mergebench_register_methods(register):
    for spec in method_specs():
        register(spec)
