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

Every hyperparameter names the ``source`` of its default. "study code" cites uiuctml/MergeBench at
commit b245648 (``merging/`` unless a path says otherwise), "Table 7" the study's grids. A method's
``study-code`` :class:`~mergebench.specs.Semantics` is the set of values that makes it compute what
that code computes (docs/fidelity.md compares the two forms, method by method).
"""

from __future__ import annotations

from mergebench import hookimpl
from mergebench.specs import STUDY_CODE, HyperParam, MethodSpec, SearchPlan, Semantics

LAMBDA_GRID = tuple(round(0.1 * i, 1) for i in range(1, 11))
SCOPES = ("global", "tensor")
PKG = "mergebench_builtins.methods"
TABLE7 = "grid: the study's Table 7 (Appendix C.2)"
STUDY_LAMBDA = "study code: prepare_args.py:10 (--scaling-coef 1); " + TABLE7


def scaling(default: float = 0.3, grid: tuple = LAMBDA_GRID, source: str = STUDY_LAMBDA) -> HyperParam:
    return HyperParam("scaling", default, grid=grid, low=0.0, high=10.0, source=source,
                      doc="λ, the coefficient of the merged task vector")


def density(default: float, grid: tuple = (), doc: str = "fraction of each task vector's entries kept",
            source: str = "") -> HyperParam:
    return HyperParam("density", default, grid=grid, low=0.0, high=1.0, doc=doc, source=source)


def scope(default: str, source: str) -> HyperParam:
    return HyperParam("scope", default, choices=SCOPES, source=source,
                      doc="top-k over the whole model per expert (global, the study's) or per tensor (mergekit's)")


def samples(default: int = 1000) -> HyperParam:
    return HyperParam("samples", default, low=1, high=1_000_000,
                      doc="training samples per expert for the statistics (the study uses 1,000)",
                      source="the study's Section 3.3 ('we uniformly sample 1,000 examples'); "
                             "study code: fisher.py:135, regmean.py:41 (sample_size=1000)")


def knob(name: str, default, doc: str, source: str, **kwargs) -> HyperParam:
    """A switch between the published algorithm (its default) and the study code's behaviour.

    Added after merged artifacts were cached, so at its default it stays out of their keys."""
    return HyperParam(name, default, doc=doc, source=source, keyed="unless_default", **kwargs)


HEAD_KNOB = knob("lm_head_in_threshold", False,
                 "count an untied lm_head in the global top-k (and TIES' majority sign) without merging it, as the "
                 "study's code does", "ours: the head is no task-vector entry; the study flattens every non-embedding "
                 "parameter (utils.py:9-28) but never writes the head back (utils.py:35)")
FLOAT32 = "the study merges in the checkpoints' bfloat16 (merger.py:9-11); float32 here"


MERGEKIT_SPARSIFIERS = ("none", "magnitude", "magnitude_outliers", "random", "della_magprune")
MERGEKIT_CONSENSUS = ("none", "sum", "count")


def per_expert_param(name: str, doc: str, source: str) -> HyperParam:
    return HyperParam(name, "", doc=f"{doc}, as LABEL=VALUE,... naming every expert", source=source)


MERGEKIT = "a --mergekit-config sets it from the config (merging/mergekit_config.py)"


def method_specs() -> list[MethodSpec]:
    return [
        MethodSpec(
            name="soup", impl=f"{PKG}.soup:Soup", family="coefficient",
            hyperparams=(knob("embeddings", "averaged",
                              "averaged: the mean of whole models (the paper's); base: embeddings and lm_head stay the "
                              "base's, the rest base + Σ τ_i / n (the study's Task Arithmetic at λ = 1/n)",
                              "the paper's Table 1 (element-wise mean of the models)", choices=("averaged", "base")),),
            semantics=(Semantics(STUDY_CODE, (("embeddings", "base"),),
                                 source="scripts/merge.sh:2 (TaskArithmetic --scaling-coef 0.2), task_arithmetic.py:8-12",
                                 approximates=FLOAT32),),
            summary="Element-wise mean of the finetuned models.",
            reference_url="https://arxiv.org/abs/2203.05482",
        ),
        MethodSpec(
            name="task_arithmetic", impl=f"{PKG}.task_arithmetic:TaskArithmetic", family="coefficient",
            hyperparams=(scaling(source="ours: a low point of the grid, where five summed task vectors stay near "
                                        "the base; the study's script merges with its tuned 0.4 (scripts/merge.sh:5); "
                                        + TABLE7),),
            semantics=(Semantics(STUDY_CODE, source="task_arithmetic.py:8-12", approximates=FLOAT32),),
            summary="Base plus λ times the sum of task vectors.",
            reference_url="https://arxiv.org/abs/2212.04089",
        ),
        MethodSpec(
            name="fisher", impl=f"{PKG}.fisher:Fisher", family="coefficient",
            hyperparams=(
                samples(),
                knob("statistic", "empirical",
                     "empirical: squared gradients of each sample's completion loss on its gold tokens; "
                     "last_token_argmax: the study's hard Fisher of the last position, labelled by the model's argmax",
                     "ours: the empirical Fisher of Matena and Raffel 2022 (Sec. 2), on the tokens each expert was "
                     "trained to produce", choices=("empirical", "last_token_argmax")),
                knob("group", 1, "samples whose mean gradient is squared at once (the study: one per GPU, 4 GPUs)",
                     "ours: the Fisher is an expectation of per-sample squared gradients", low=1, high=1024),
                knob("floor", 0.0, "added to every Fisher before averaging (the study adds 1e-10)",
                     "ours: none, entries without information get the plain mean", low=0.0, high=1.0),
            ),
            semantics=(Semantics(
                STUDY_CODE, (("statistic", "last_token_argmax"), ("group", 4), ("floor", 1e-10)),
                source="fisher_utils.py:20-32 (hard Fisher, last token), fisher.py:84-101 (squared per step), "
                       "fisher.py:189 (+1e-10), scripts/merge.sh:11 (4 GPUs)",
                approximates="its Trainer updates the weights between steps (AdamW, 1e-5, taskloader.py:60-74); the expert's "
                             "weights stay fixed here. It formats samples as Alpaca prompts (taskloader.py:8-41), "
                             "pairs experts with another domain's data (scripts/merge.sh:8-10 against main.py:6) and "
                             "Fisher-merges an untied lm_head (fisher.py:181); here samples are chat-formatted, paired "
                             "by domain, and the head stays the base's. " + FLOAT32),),
            summary="Average weighted entry by entry by each expert's diagonal Fisher information.",
            reference_url="https://arxiv.org/abs/2111.09832",
        ),
        MethodSpec(
            name="regmean", impl=f"{PKG}.regmean:RegMean", family="coefficient",
            hyperparams=(
                HyperParam("alpha", 0.9, grid=(0.1, 0.3, 0.5, 0.7, 0.9), low=0.0, high=1.0,
                           doc="scale of the Gram matrices' off-diagonal entries (the study's 'reduction')",
                           source="RegMean's suggested 0.9 (Jin et al. 2023), which the study's Appendix C.2 quotes "
                                  "before tuning it; its script has no default (prepare_args.py:33; "
                                  "scripts/merge.sh:30 uses 0.5); " + TABLE7),
                samples(),
                knob("solver", "solve",
                     "solve: (Σ τ_i G̃_i)(Σ G̃_i)⁻¹ on task vectors, least squares where singular (a dead input keeps "
                     "the base's column); study: inverse or pinv on the weights, as the study's code",
                     "ours: the same normal equations, solved where they are well posed", choices=("solve", "study")),
            ),
            semantics=(Semantics(
                STUDY_CODE, (("solver", "study"),), source="regmean.py:61-88, regmean_utils.py:88-92",
                approximates="its Gram running means and inverse are bfloat16 (regmean_utils.py:42-50, regmean.py:84-86), "
                             "and it pairs experts with another domain's data (scripts/merge.sh:30 against main.py:6); "
                             "float32 and domain pairing here"),),
            summary="Linear layers solved to reproduce every expert's outputs on its inputs (Gram matrices).",
            reference_url="https://arxiv.org/abs/2212.09849",
        ),
        MethodSpec(
            name="ties", impl=f"{PKG}.ties:Ties", family="sparsification",
            hyperparams=(
                scaling(1.0),
                density(0.2, (0.1, 0.2, 0.3), source="study code: prepare_args.py:13 (--K 0.2); " + TABLE7),
                scope("global", "study code: one threshold over the flattened model per expert "
                                "(TIES.py:13-17, ties_merging_utils.py:60-80), as the TIES paper"),
                knob("merge_func", "mean", "mean (the paper's disjoint mean) or sum of the agreeing entries",
                     "the TIES paper's disjoint merge (Yadav et al. 2023, Sec. 3); the study's code sums "
                     "(prepare_args.py:14)", choices=("mean", "sum")),
                knob("topk", "floor", "entries kept per expert: floor = ⌊d·K⌋ (at least 1); floor_plus_one = ⌊d·K⌋+1, "
                     "the study's kthvalue", "ours: exactly the density's share; the study keeps one more "
                     "(ties_merging_utils.py:69-75)", choices=("floor", "floor_plus_one")),
                knob("zero_sign", "positive", "the elected sign where the trimmed task vectors sum to 0: + (ours) or "
                     "the whole model's majority sign (the study's)", "ours: a fixed rule; the study's "
                     "resolve_zero_signs (ties_merging_utils.py:83-96)", choices=("positive", "majority")),
                HEAD_KNOB,
            ),
            semantics=(Semantics(
                STUDY_CODE, (("merge_func", "sum"), ("topk", "floor_plus_one"), ("zero_sign", "majority"),
                             ("lm_head_in_threshold", True), ("scope", "global")),
                source="TIES.py:11-22, ties_merging_utils.py:60-143, prepare_args.py:13-14, utils.py:9-45",
                approximates=FLOAT32),),
            summary="Trim task vectors to their top-k magnitudes, elect signs, average the agreeing entries.",
            reference_url="https://arxiv.org/abs/2306.01708",
        ),
        MethodSpec(
            name="dare", impl=f"{PKG}.dare:Dare", family="sparsification",
            hyperparams=(
                scaling(1.0),
                HyperParam("p", 0.8, grid=(0.7, 0.8, 0.9), low=0.0, high=0.999,
                           doc="drop probability; the study's sparsity s ∈ {0.1, 0.2, 0.3} kept is p = 1 − s",
                           source="study code: prepare_args.py:17 (--p 0.8); " + TABLE7 + " as 1 − sparsity"),
            ),
            semantics=(Semantics(STUDY_CODE, source="DARE.py:11-28",
                                 approximates="its masks come from torch's global generator over the flattened model "
                                              "(DARE.py:16), ours from one seeded per (seed, tensor, expert): the same "
                                              "distribution, other draws. " + FLOAT32),),
            summary="Drop task-vector entries at random with probability p, rescale by 1/(1−p), add.",
            reference_url="https://arxiv.org/abs/2311.03099",
        ),
        MethodSpec(
            name="consensus", impl=f"{PKG}.consensus:Consensus", family="sparsification", min_experts=2,
            hyperparams=(
                scaling(1.0),
                HyperParam("mask_lambda", 0.5, grid=(0.2, 0.3, 0.4, 0.5, 0.6), low=0.0, high=100.0,
                           doc="λ_c of the TALL masks |τ_i| ≥ λ_c |τ_MTL − τ_i|, for tasks mask_lambdas does not name",
                           source="study code: prepare_args.py:29 (--lamda 0.5, which consensus.py never reads); "
                                  + TABLE7),
                HyperParam("k", 2, low=1, high=1000, doc="how many task masks must agree",
                           source="the study's Appendix A (Σ m_i ≥ 2); study code: prepare_args.py:28"),
                knob("mask_lambdas", "", "per-task λ_c as DOMAIN=VALUE,… (what the per-task search finds)",
                     "the study's Appendix C.2: each task's λ_c is tuned"),
                knob("mask_compare", "ge", "ge: |τ_i| ≥ λ_c|τ_MTL − τ_i| (the paper's); gt: strict >, the study's code",
                     "the study's Appendix A and TALL masks (Wang et al. 2024, Eq. 4); consensus.py:33 uses >",
                     choices=("ge", "gt")),
                knob("isolate", "", "a domain: only its TALL mask on τ_MTL (the model the per-task search scores)",
                     "TALL masks' retrieval θ_pre + m_t ⊙ τ_MTL (Wang et al. 2024, Sec. 3)"),
                HyperParam("search_plan", "per_task", choices=("per_task", "product"), keyed="never",
                           doc="per_task: λ_c per task on its own surrogate, then λ (the paper's 35 runs); product: "
                               "one grid of λ_c × λ on every surrogate (50 runs)",
                           source="the study's Appendix C.2 ('each of the 5 tasks require tuning of the sparsity "
                                  "parameters, and subsequently ... the scaling coefficients, totaling 35 runs')"),
            ),
            semantics=(Semantics(
                STUDY_CODE, (("mask_lambda", 0.2), ("mask_compare", "gt"), ("mask_lambdas", ""),
                             ("search_plan", "product")),
                source="consensus.py:21-46 (λ_c = 0.2 for every task, strict >)", approximates=FLOAT32),),
            search_plan=SearchPlan(param="mask_lambda", per_task_param="mask_lambdas", isolate="isolate"),
            summary="Task arithmetic restricted to entries that at least k tasks' TALL masks select.",
            reference_url="https://arxiv.org/abs/2405.07813",
        ),
        MethodSpec(
            name="localize_stitch", impl=f"{PKG}.localize_stitch:LocalizeStitch", family="sparsification",
            hyperparams=(
                density(0.1, doc="fraction of entries in each mask's initialization",
                        source="study code: prepare_args.py:21 (--sparsity 0.1)"),
                HyperParam("sigmoid_bias", 3.0, low=0.0, high=100.0, doc="initial mask logits ±bias",
                           source="study code: prepare_args.py:20"),
                HyperParam("lr", 1e8, low=0.0, doc="SGD learning rate of the mask logits",
                           source="study code: prepare_args.py:22; scripts/merge.sh:48"),
                HyperParam("epochs", 1, low=1, high=100, doc="passes over the samples",
                           source="study code: prepare_args.py:23"),
                HyperParam("l1", 0.0, low=0.0, doc="L1 penalty on the relaxed mask", source="study code: prepare_args.py:24"),
                samples(),
            ),
            semantics=(Semantics(STUDY_CODE, unavailable=(
                "the study trains each mask inside an SFT run that also updates the weights, in its first epoch the "
                "shared base object itself (localize_utils.py:90-177); with the weights fixed it is another algorithm")),),
            summary="Masks trained on each expert's samples localize its skill; the regions are stitched.",
            reference_url="https://arxiv.org/abs/2408.13656",
        ),
        MethodSpec(
            name="dataless_localize_stitch", impl=f"{PKG}.dataless_localize_stitch:DatalessLocalizeStitch",
            family="sparsification",
            hyperparams=(
                density(0.1, (0.1, 0.2, 0.3, 0.4, 0.5),
                        source="study code: prepare_args.py:21, scripts/merge.sh:45 (--sparsity 0.1); " + TABLE7),
                scope("global", "study code: one top-k over the flattened model (localize_utils.py:44-61)"),
                knob("drifting_base", False, "take each expert's task vector against the base the experts before it "
                     "moved, and stitch onto the moved base (the study's bug)",
                     "the Localize-and-Stitch paper (He et al. 2025, Alg. 2): every region against θ_pre"),
                knob("overlap", "all", "all: overlaps averaged over every expert that selects the entry; last: counted "
                     "against the last other expert only (the study's bug)",
                     "the Localize-and-Stitch paper's stitching (Alg. 2)", choices=("all", "last")),
                knob("expert_order", "given", "the order the two bugs process experts in: as given, or the study's "
                     "(instruction, math, coding, safety, multilingual)", "ours: the paper's method does not depend "
                     "on it; the study's main.py:6 loads its experts in that order", choices=("given", "study")),
                HEAD_KNOB,
            ),
            semantics=(Semantics(
                STUDY_CODE, (("scope", "global"), ("drifting_base", True), ("overlap", "last"),
                             ("expert_order", "study"), ("lm_head_in_threshold", True)),
                source="localize_and_stitch.py:41-62, localize_utils.py:64-87 and 194-223, utils.py:30-45",
                approximates=FLOAT32),),
            summary="Each expert's top-k task-vector entries are stitched onto the base, overlaps averaged.",
            reference_url="https://arxiv.org/abs/2408.13656",
        ),
        MethodSpec(
            name="slerp", opt_in=True, impl=f"{PKG}.slerp:Slerp", family="other", min_experts=2, max_experts=2,
            hyperparams=(HyperParam("t", 0.5, grid=(0.3, 0.5, 0.7), low=0.0, high=1.0,
                                    doc="interpolation position: 0 = first expert, 1 = second (grid ours)",
                                    source="ours: the midpoint, weighing both experts alike"),),
            summary="Spherical interpolation between two experts, tensor by tensor.",
            reference_url="https://en.wikipedia.org/wiki/Slerp",
        ),
        MethodSpec(
            name="della", opt_in=True, impl=f"{PKG}.della:Della", family="sparsification",
            hyperparams=(
                scaling(1.0, source="ours: TIES' default, as DELLA merges like TIES after its drop"),
                density(0.2, (0.1, 0.2, 0.3), source="ours: TIES' study default, for a like-for-like comparison"),
                HyperParam("epsilon", 0.1, grid=(0.025, 0.05), low=0.0, high=0.5,
                           doc="spread of keep probabilities around density (grid ours: a quarter and a half of the "
                               "grid's smallest density, so that every grid point keeps each entry with a positive "
                               "probability; 0.1 with density 0.1 is refused)",
                           source="ours: within the range DELLA's paper tunes (Deep et al. 2024, Sec. 4)"),
            ),
            summary="Magnitude-ranked random drop with rescaling, then TIES' sign election and mean.",
            reference_url="https://arxiv.org/abs/2406.11617",
        ),
        MethodSpec(
            name="breadcrumbs", opt_in=True, impl=f"{PKG}.breadcrumbs:Breadcrumbs", family="sparsification",
            hyperparams=(
                scaling(1.0, source="ours: TIES' default"),
                density(0.9, (0.8, 0.9), source="ours: keeps most entries, as Breadcrumbs' masks do "
                                               "(Davari and Belilovsky 2024)"),
                HyperParam("gamma", 0.01, grid=(0.01, 0.02), low=0.0, high=1.0,
                           doc="fraction of largest-magnitude outliers dropped (grid ours)",
                           source="ours: a 1% outlier cut, the order of magnitude Breadcrumbs' paper uses"),
                scope("tensor", "the Breadcrumbs paper and mergekit: per layer"),
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
            hyperparams=(per_expert_param("weights", "each expert's weight (default 1 each)",
                                          f"ours: equal weights, the Model Soups uniform soup (Wortsman et al. 2022); {MERGEKIT}"),
                         HyperParam("normalize", True, doc="divide by the sum of the weights",
                                    source=f"mergekit's linear (normalize defaults to true there); {MERGEKIT}")),
            summary="Weighted average of whole models, one weight per expert (mergekit's linear).",
            reference_url="https://arxiv.org/abs/2203.05482",
        ),
        MethodSpec(
            name="mergekit_gta", opt_in=True, in_all=False, impl=f"{PKG}.mergekit_gta:MergekitGTA", family="sparsification",
            hyperparams=(
                HyperParam("scaling", 1.0, doc="λ, mergekit's lambda: the coefficient of the merged task vector",
                           source=f"mergekit's lambda default 1.0; {MERGEKIT}"),
                HyperParam("sparsify", "none", choices=MERGEKIT_SPARSIFIERS,
                           doc="per-tensor sparsifier: none (task arithmetic), magnitude (TIES), "
                               "magnitude_outliers (Breadcrumbs), random (DARE), della_magprune (DELLA)",
                           source=f"ours: none is mergekit's task_arithmetic; {MERGEKIT} from its merge_method"),
                HyperParam("consensus", "none", choices=MERGEKIT_CONSENSUS,
                           doc="sign election: none, sum (TIES: the sign of the summed deltas), count (majority of signs)",
                           source=f"ours: none is mergekit's task_arithmetic; {MERGEKIT} from its merge_method"),
                per_expert_param("weights", "each expert's weight w_i (default 1 each)",
                                 f"ours: every expert counts equally, as task arithmetic; {MERGEKIT}"),
                per_expert_param("densities", "each expert's density, the fraction kept (default 1 each)",
                                 f"mergekit's density default 1.0 (nothing dropped); {MERGEKIT}"),
                per_expert_param("gammas", "each expert's outlier fraction for magnitude_outliers (default 0.01 each)",
                                 f"mergekit's breadcrumbs gamma default 0.01; {MERGEKIT}"),
                per_expert_param("epsilons", "each expert's keep-probability spread for della_magprune (default 0.15 each)",
                                 f"mergekit's della epsilon default 0.15; {MERGEKIT}"),
                HyperParam("normalize", False, doc="divide by the summed weights of the (agreeing) experts",
                           source=f"mergekit's task_arithmetic does not normalize; {MERGEKIT} per merge_method"),
                HyperParam("rescale", False, doc="rescale each sparsified task vector to its L1 norm",
                           source=f"mergekit's task_arithmetic does not rescale; {MERGEKIT} per merge_method"),
            ),
            summary="mergekit's generalized task arithmetic (task_arithmetic, ties, dare_*, breadcrumbs*, della*) "
                    "with per-expert weights and densities.",
            reference_url="https://github.com/arcee-ai/mergekit",
        ),
        MethodSpec(
            name="tsv", opt_in=True, impl=f"{PKG}.tsv:TaskSingularVectors", family="other",
            hyperparams=(scaling(1.0, (0.5, 0.75, 1.0, 1.25, 1.5),
                                 source="the TSV-Merge paper merges at α = 1 (Gargiulo et al. 2025); grid ours"),),
            summary="Each task's top singular directions, decorrelated across tasks (TSV-Merge).",
            reference_url="https://arxiv.org/abs/2412.00081",
        ),
        MethodSpec(
            name="iso_c", opt_in=True, impl=f"{PKG}.iso:IsoC", family="other",
            hyperparams=(scaling(1.0, (0.5, 1.0, 1.5, 2.0), source="ours: the unscaled spectrum; grid ours"),),
            summary="Summed task matrices with a flattened (isotropic) singular spectrum.",
            reference_url="https://arxiv.org/abs/2502.04959",
        ),
        MethodSpec(
            name="iso_cts", opt_in=True, impl=f"{PKG}.iso:IsoCTS", family="other",
            hyperparams=(
                scaling(1.0, (0.5, 1.0, 1.5, 2.0), source="ours: the unscaled spectrum; grid ours"),
                HyperParam("common_fraction", 0.8, low=0.0, high=1.0,
                           doc="share of the rank given to the common subspace (the paper's 0.8)",
                           source="the Iso-CTS paper (Marczak et al. 2025): 0.8 of the rank common"),
            ),
            summary="Isotropic merging in a common subspace plus task-specific subspaces.",
            reference_url="https://arxiv.org/abs/2502.04959",
        ),
    ]


@hookimpl
def mergebench_register_methods(register):
    for spec in method_specs():
        register(spec)
