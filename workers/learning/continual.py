"""The continual-learning recipe: which "keep the old" mechanisms are on, how strong, and the glue to `fit`.

`ContinualConfig` names every knob; `RECIPES` holds the ones bench/forgetting.py compares, with
`NAIVE` (plain continued LoRA) and `DEFAULT` (chosen by that measurement — see the numbers below).
A cycle is: `prepare_cycle` (rows mixed with replay + the regulariser list) → `training.fit` →
`finish_cycle` (this cycle's Fisher, folded online into the previous one, for the next cycle's EWC).

Measured on the two-task facts experiment (tiny model, 50 facts per set, LoRA r=16 on all linear
layers, 40 epochs per cycle; bench/forgetting.py, forgetting of A / accuracy on B): naive 0.705 / 1.000;
replay 20% 0.011 / 0.993; EWC on ΔW λ=0.1 0.049 / 0.986; L2 on ΔW λ=0.1 0.082 / 0.997; EWC on LoRA
params λ=0.1 0.060 / 0.997; KL to parent 0.657 / 0.997; replay 20% + EWC (LoRA params) λ=0.03
0.000 / 0.993 (the DEFAULT).

On SmolLM2-135M-Instruct (bench/forgetting.py --model smollm2-135m-instruct, rounds of 30 invented
facts with sentence answers, lr 2e-3, 8 epochs, r=16, round 1, share of the base's right answers to
the 61 general questions still right): naive 0.54; self-replay of the base's greedy answers as hard
targets 0.79 (share 0.5) and 0.77 (0.8) with the first 64 prompts, 0.74 with all 160 — those answers include the base's evasive ones ("What is the
capital of Finland?" → "Finland is a Nordic country located in Northern Europe."), and training on
them makes that mode the rule; the same rows as hard targets + KL λ=1 0.84, λ=4 0.89 (recall 0.43);
as KL-only (soft) targets, 160 prompts, λ=1 0.90 at recall 0.90, λ=4 0.93 at recall 0.40. DEFAULT takes KL-only
λ=1: the best general retention that keeps recall >= 0.8. The README's forgetting table has the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from common.errors import ConfigError
from common.nested_frequencies import parse_frequencies
from workers.learning.evaluation import bounded_sample
from workers.learning.ewc import EWC
from workers.learning.fisher import batches_for_rows, compute_fisher
from workers.learning.fisher_artifact import FisherArtifact, fold
from workers.learning.kl import KLDistillation
from workers.learning.replay import HistoryFactory, ReplayMixer
from workers.learning.tiers import PRESETS, NestedConfig, TierPlan, fisher_importance, plan_tiers

Row = dict[str, Any]


@dataclass(frozen=True)
class ContinualConfig:
    """Strengths of each mechanism; 0 turns one off. Validated on construction."""

    replay_share: float = 0.0  # share of every epoch drawn afresh from earlier datasets
    ewc_strength: float = 0.0  # λ of (λ/2) Σ F (θ − θ*)²
    ewc_space: Literal["lora", "delta_w"] = "delta_w"
    ewc_fisher: bool = True  # False: plain L2 on the change of ΔW (F = 1), needs no Fisher
    ewc_gamma: float = 0.9  # online EWC decay: F ← γ F_old + F_new
    fisher_samples: int = 256  # rows of the cycle's data the Fisher is estimated on (bounded cost)
    fisher_mode: Literal["fast", "activations", "vmap", "loop"] = "fast"
    kl_strength: float = 0.0
    kl_teacher: Literal["base", "parent"] = "parent"
    # Base-model protection from the first cycle (issue 8 part D; `workers.learning.self_replay`):
    # share of every epoch drawn from the base model's own answers to general prompts.
    self_replay_share: float = 0.0
    # KL(p_base ‖ p_student) on those self-replay rows only: the base's whole next-token
    # distribution on general prompts, not just its greedy answer (needs self_replay_share > 0).
    self_replay_kl: float = 0.0
    # Cross-entropy weight of those rows. The base's greedy answers include its evasive and wrong ones
    # ("What is the capital of Finland?" → "Finland is a Nordic country located in Northern
    # Europe."): trained as hard targets they make that mode the rule. 0 keeps only the KL (soft) term.
    self_replay_weight: float = 1.0
    # Nested multi-frequency tiers (`workers.learning.tiers`): update frequencies, fastest tier first;
    # empty = off (the plain step). `nested_strategy` / `nested_shallow` assign modules to tiers.
    nested_frequencies: tuple[int, ...] = ()
    nested_strategy: str = "depth"
    nested_shallow: str = "fast"
    # The surprise auxiliary objective (`workers.learning.surprise`): λ (0 = off), every N-th
    # micro-batch, over these decoder layers (negative = from the last), clip κ per position.
    surprise_strength: float = 0.0
    surprise_every: int = 1
    surprise_layers: tuple[int, ...] = (-1,)
    surprise_clip: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        problems = []
        if not 0.0 <= self.replay_share < 1.0:
            problems.append(f"replay_share must be in [0, 1) (got {self.replay_share})")
        if not 0.0 <= self.self_replay_share < 1.0:
            problems.append(f"self_replay_share must be in [0, 1) (got {self.self_replay_share})")
        for name in ("ewc_strength", "kl_strength", "self_replay_kl", "self_replay_weight"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0 (got {getattr(self, name)})")
        if not 0.0 <= self.ewc_gamma <= 1.0:
            problems.append(f"ewc_gamma must be in [0, 1] (got {self.ewc_gamma})")
        if self.ewc_space not in ("lora", "delta_w"):
            problems.append(f"ewc_space must be 'lora' or 'delta_w' (got {self.ewc_space!r})")
        if self.kl_teacher not in ("base", "parent"):
            problems.append(f"kl_teacher must be 'base' or 'parent' (got {self.kl_teacher!r})")
        if self.self_replay_share > 0 and self.self_replay_weight == 0 and self.self_replay_kl == 0:
            problems.append("self_replay_weight 0 with self_replay_kl 0 trains the self-replay rows on nothing")
        if self.self_replay_kl > 0 and self.self_replay_share <= 0:
            problems.append("self_replay_kl needs self_replay_share > 0 (it applies to the self-replay rows)")
        if self.fisher_samples < 1:
            problems.append(f"fisher_samples must be >= 1 (got {self.fisher_samples})")
        frequencies: Any = self.nested_frequencies
        if isinstance(frequencies, str):  # a per-job override may name a preset or give "1,2,4"
            try:
                frequencies = parse_frequencies(frequencies)
            except ValueError as exc:
                problems.append(str(exc))
                frequencies = ()
        object.__setattr__(self, "nested_frequencies", tuple(frequencies))  # JSON gives a list
        object.__setattr__(self, "surprise_layers", tuple(self.surprise_layers))
        if self.surprise_strength < 0:
            problems.append(f"surprise_strength must be >= 0 (got {self.surprise_strength})")
        if self.surprise_every < 1:
            problems.append(f"surprise_every must be >= 1 (got {self.surprise_every})")
        if not self.surprise_clip > 0:
            problems.append(f"surprise_clip must be > 0 (got {self.surprise_clip})")
        if self.surprise_strength > 0 and not self.surprise_layers:
            problems.append("surprise_layers must name at least one layer")
        if self.nested_frequencies:
            try:
                self.nested()
            except ConfigError as exc:
                problems.append(str(exc))
        if problems:
            raise ConfigError("invalid continual config: " + "; ".join(problems))

    def nested(self) -> NestedConfig | None:
        if not self.nested_frequencies:
            return None
        return NestedConfig(frequencies=self.nested_frequencies, strategy=self.nested_strategy,  # type: ignore[arg-type]
                            shallow=self.nested_shallow)  # type: ignore[arg-type]

    @property
    def needs_fisher(self) -> bool:
        return self.ewc_strength > 0 and self.ewc_fisher

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


NAIVE = ContinualConfig()
# bench/forgetting.py, tiny model, 2 rounds of 30 facts, tiers + surprise from round 1: λ = 1 learns nothing
# (round-1 exact match 0.00), 0.1 → 0.37, 0.01 → 0.67 (tiers alone 0.70); forgetting 0.45–0.46 at every λ vs
# 0.44 for tiers alone: no benefit measured yet. 0.01 is the least harmful value tried (issue 11).
SURPRISE_STRENGTH = 0.01
# Each mechanism alone, at the strength that measured best on its own (bench/forgetting.py).
RECIPES: dict[str, ContinualConfig] = {
    "naive": NAIVE,
    "replay": ContinualConfig(replay_share=0.2),
    "ewc_lora": ContinualConfig(ewc_strength=0.1, ewc_space="lora"),
    "ewc_delta_w": ContinualConfig(ewc_strength=0.1, ewc_space="delta_w"),
    "l2_delta_w": ContinualConfig(ewc_strength=0.1, ewc_space="delta_w", ewc_fisher=False),
    "kl": ContinualConfig(kl_strength=1.0, kl_teacher="parent"),
    # Base protection from the first cycle: KL to the base on its own answers to general prompts
    # (soft targets only; as hard targets the same rows kept 0.79 of the general answers, see below).
    "self_replay": ContinualConfig(self_replay_share=0.5, self_replay_weight=0.0, self_replay_kl=1.0),
    # LoRA modules in tiers by depth, updated every 1, 2 and 4 steps (CONTINUUM_NESTED_* choose others).
    "nested": ContinualConfig(nested_frequencies=PRESETS["balanced"]),
    # The same tiers plus the surprise objective on the last decoder layer (any recipe takes it with
    # the override surprise_strength > 0).
    "nested_surprise": ContinualConfig(nested_frequencies=PRESETS["balanced"], surprise_strength=SURPRISE_STRENGTH),
}
# Chosen by bench/forgetting.py (50 facts/set, seed 0): replay 20% alone forgets 0.011 of A at B 0.993;
# + EWC λ=0.03 forgets 0.000 (LoRA space) / -0.004 (ΔW space), both at B 0.993. LoRA space is the
# default because it costs ~0.5% per step and an adapter-sized Fisher; dense ΔW-space EWC costs ~10-20%
# per step on the tiny model and a Fisher the size of the wrapped base weights.
# Base protection (issue 8 D): self-replay of the base model's own answers to general prompts, half of
# every epoch, on from the first cycle. On the random tiny model the base's "answers" are noise (it
# knows nothing to keep; the bench measured forgetting 0.055 either way); on SmolLM2-135M-Instruct see
# the README's forgetting table.
DEFAULT = ContinualConfig(replay_share=0.2, ewc_strength=0.03, ewc_space="lora", self_replay_share=0.5,
                          self_replay_weight=0.0, self_replay_kl=1.0)
RECIPES["default"] = DEFAULT


def recipe(name: str, **overrides: Any) -> ContinualConfig:
    """A named recipe with `overrides` applied (e.g. ``recipe("default", replay_share=0.3)``)."""
    if name not in RECIPES:
        raise ConfigError(f"unknown continual recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return replace(RECIPES[name], **overrides)


@dataclass
class CyclePlan:
    """What `fit` needs for one cycle: `rows` (a list or epoch → list) and the regularisers."""

    rows: Sequence[Row] | ReplayMixer
    regularizers: list[Any]
    notes: list[str]
    tiers: TierPlan | None = None  # the nested recipe's tiers (fit's `tiers=`), else None


def prepare_cycle(
    model: Any,
    new_rows: Sequence[Row],
    config: ContinualConfig,
    history: HistoryFactory | None = None,
    fisher: FisherArtifact | dict[str, Any] | None = None,
    parent_teacher: str | None = None,
    epochs: int = 1,
    base_rows: Sequence[Row] | None = None,
) -> CyclePlan:
    """Rows and regularisers for a cycle; call with the parent adapter loaded (it becomes θ*).

    `history` streams earlier datasets (replay), `fisher` is the online Fisher carried from earlier
    cycles (EWC) in `config.ewc_space` — pass the `FisherArtifact` so EWC weighs by its stored scale
    (a bare dict is scaled to mean 1) —, `parent_teacher` the adapter name the parent was loaded under
    (`kl.load_parent_as_teacher`) for KL to the parent, `epochs` how many epochs `fit` will run (replay
    draws all of them in one pass over history). A mechanism whose input is missing (first cycle: no
    history, no Fisher, no parent) is left off and said so in `notes`. `base_rows` are the base
    model's own answers to general prompts (`self_replay.self_replay_rows`) for `self_replay_share`.
    """
    notes: list[str] = []
    rows: Sequence[Row] | ReplayMixer = list(new_rows)
    if config.replay_share > 0:
        if history is None:
            notes.append("replay off: no earlier datasets")
        else:
            rows = ReplayMixer(list(new_rows), history, config.replay_share, seed=config.seed, epochs=epochs)
    regularizers: list[Any] = []
    if config.ewc_strength > 0:
        fisher_values = fisher.values if isinstance(fisher, FisherArtifact) else fisher
        if config.needs_fisher and not fisher_values:
            # A fresh adapter has learnt nothing to anchor and no old-task Fisher exists yet.
            notes.append("ewc off: no Fisher from an earlier cycle")
        else:
            regularizers.append(EWC.from_model(model, fisher if config.ewc_fisher else None, config.ewc_strength,
                                               space=config.ewc_space))
    if config.kl_strength > 0:
        teacher = "base" if config.kl_teacher == "base" else parent_teacher
        if teacher is None:
            notes.append("kl off: no parent adapter loaded as teacher")
        else:
            regularizers.append(KLDistillation(config.kl_strength, teacher=teacher))
    rows = _with_self_replay(rows, len(new_rows), base_rows, config, notes)
    if config.self_replay_kl > 0 and config.self_replay_share > 0 and base_rows:
        regularizers.append(KLDistillation(config.self_replay_kl, teacher="base", rows="self_replay",
                                           name="self_replay_kl"))
    if config.surprise_strength > 0:
        from workers.learning.surprise import SurpriseLoss, supports_double_backward

        if supports_double_backward(model):
            regularizers.append(SurpriseLoss(model, config.surprise_strength, config.surprise_layers,
                                             config.surprise_every, config.surprise_clip))
        else:
            notes.append("surprise off: a 4-bit base cannot backpropagate twice (second-order gradients); "
                         "train on a 16/32-bit base to use it")
    tiers = _tiers(model, config, fisher, notes)
    return CyclePlan(rows=rows, regularizers=regularizers, notes=notes, tiers=tiers)


def _tiers(model: Any, config: ContinualConfig, fisher: Any, notes: list[str]) -> TierPlan | None:
    nested = config.nested()
    if nested is None:
        return None
    from workers.learning.lora import trainable_parameters

    values = fisher.values if isinstance(fisher, FisherArtifact) else fisher
    space = fisher.space if isinstance(fisher, FisherArtifact) else "lora"
    importance = fisher_importance(values) if space == "lora" else None
    plan = plan_tiers(list(trainable_parameters(model)), nested, importance=importance)
    notes.extend(plan.notes)
    return plan


def _with_self_replay(rows: Any, new_count: int, base_rows: Sequence[Row] | None, config: ContinualConfig,
                      notes: list[str]) -> Any:
    """`rows` plus the recipe's share of self-replay rows (base protection, on from the first cycle)."""
    if config.self_replay_share <= 0:
        return rows
    if not base_rows:
        notes.append("self-replay off: no base-model rows given")
        return rows
    from workers.learning.self_replay import SelfReplayMixer

    if config.self_replay_weight != 1.0:
        base_rows = [dict(r, weight=config.self_replay_weight) for r in base_rows]
    return SelfReplayMixer(rows, new_count, base_rows, config.self_replay_share, seed=config.seed)


def finish_cycle(
    model: Any,
    tokenizer: Any,
    trained_rows: Sequence[Row],
    config: ContinualConfig,
    previous: FisherArtifact | None = None,
    base_model_id: str = "",
    max_length: int = 256,
) -> FisherArtifact | None:
    """This cycle's Fisher on (a bounded sample of) its new rows, folded into `previous` online
    (`fisher_artifact.fold`: a `previous` of another space starts the chain afresh).

    Returns None when the recipe needs no Fisher. Computed at the trained adapter, so every factor
    (``lora_A`` included) has a non-zero Fisher for the next cycle.
    """
    if not config.needs_fisher:
        return None
    sample = bounded_sample(list(trained_rows), config.fisher_samples, config.seed)
    batches = batches_for_rows(sample, tokenizer, batch_size=8, max_length=max_length)
    new = compute_fisher(model, batches, mode=config.fisher_mode, space=config.ewc_space)
    # Folded with the chain's stored scale (fixed once, from its first Fisher): accumulation is kept.
    return fold(previous, new, num_samples=len(sample), mode=config.fisher_mode, space=config.ewc_space,
                gamma=config.ewc_gamma, base_model_id=base_model_id, recipe=config.to_dict())


def first_cycle_fisher(model: Any, tokenizer: Any, anchor_rows: Sequence[Row], config: ContinualConfig,
                       max_length: int = 256) -> dict[str, Any] | None:
    """The first cycle's deliberate anchor: the base weights' Fisher on rows the base should keep.

    On a fresh adapter (lora_B = 0) the LoRA-space Fisher of every lora_A is exactly 0, so LoRA-space
    EWC would anchor almost nothing. The ΔW-space Fisher is the Fisher of the wrapped base weights,
    non-zero at ΔW = 0, so passing this to `prepare_cycle(fisher=...)` makes EWC hold ΔW near 0 where
    the anchor rows (e.g. the base model's own answers to the anchor prompts) depend on it.
    Returns None unless the recipe uses Fisher-weighted EWC in ΔW space.
    """
    if not (config.needs_fisher and config.ewc_space == "delta_w") or not anchor_rows:
        return None
    sample = bounded_sample(list(anchor_rows), config.fisher_samples, config.seed)
    batches = batches_for_rows(sample, tokenizer, batch_size=8, max_length=max_length)
    return compute_fisher(model, batches, mode=config.fisher_mode, space="delta_w")
