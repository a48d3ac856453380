"""Config sections for how a run trains and evaluates: the RL algorithm, the two loops, tracking, evaluation.

Each section is a frozen, keyword-only dataclass: the only source of its defaults, validated in `__post_init__`
with messages that say how to fix the value (`rlwork.config.typed.ConfigError`).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

from rlwork.config.typed import ConfigError


@dataclasses.dataclass(frozen=True, kw_only=True)
class AlgoConfig:
    preset: Literal["coupled_grpo", "espo", "d1", "trace_grpo"] | None = None
    """Published recipe whose values sit under this file's (see PRESETS); null = dataclass defaults only."""
    num_generations: int = 8
    """G completions per prompt (TRL's name)."""
    likelihood: Literal["elbo", "trace"] = "elbo"
    """Per-token log-likelihood in the ratio and the KL. elbo: a bound under random masks (elbo_estimator); trace:
    exact, each token's log-prob at the denoising step that committed it, on the sampler's own trajectory
    (rlwork.diffusion.trace; TraceRL). trace reads the old policy's log-probs from the rollout (no forward) and
    scores with the sampler's temperature/top-k/top-p; the elbo_* and mask settings do not apply to it."""
    elbo_estimator: Literal["mc", "coupled", "stratified", "one_step"] = "coupled"
    """ELBO estimator (likelihood=elbo); one_step is d1's biased baseline."""
    elbo_samples: int = 1
    """Mask draws per completion (pairs for coupled/stratified)."""
    prompt_mask_prob: float = 0.0
    """Also mask prompt tokens with this probability (d1 uses 0.15)."""
    advantage: Literal["grpo", "dr_grpo", "rloo"] = "rloo"
    """Advantage estimator."""
    scale_rewards: Literal["group", "batch", "none"] | None = None
    """Std scaling of advantages; null = the estimator's paper default."""
    negative_weight: float = 1.0
    """Scale of the negative advantages: 1 = the estimator's; 0 = reinforce only the completions that beat their
    group (reward-filtered self-imitation, RAFT), pushing no completion's likelihood bound down."""
    epsilon: float = 0.2
    """Lower clip range of the ratio."""
    epsilon_high: float | None = None
    """Upper clip range (DAPO clip-higher); null = epsilon."""
    importance_sampling_level: Literal["token", "sequence"] = "token"
    """Token ratios, or one sequence ratio exp((ELBO_new - ELBO_old)/L) (ESPO/GSPO)."""
    loss_type: Literal["grpo", "dr_grpo", "dapo"] = "grpo"
    """Loss aggregation over tokens and rows."""
    beta: float = 0.01
    """KL coefficient to the reference (the adapter-disabled base)."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    """KL estimator per token."""
    reference_copy: bool = False
    """Full fine-tuning with beta > 0: keep a frozen copy of the initial model as the reference (one more model)."""
    num_iterations: int = 1
    """Policy updates per rollout batch (mu)."""
    resample_masks_per_iteration: bool = False
    """New mask draws for each iteration (d1); false = one draw shared by old/ref/current (DiffuCoder, ESPO)."""
    group_masks: Literal["independent", "shared"] = "independent"
    """Mask noise across a group's completions (likelihood=elbo): independent per row, or shared: the same
    positions and rates in every completion of a prompt, each restricted to its own tokens, so that what the
    completions share cancels in the group's advantage-weighted gradient (common random numbers). Each row's
    estimate keeps its expectation. Not with the stratified estimator (exact per-row counts)."""
    dynamic_sampling: Literal["keep", "skip", "resample"] = "skip"
    """Groups whose rewards are all equal carry no signal: keep them in the loss, leave them out, or replace them
    with groups of fresh prompts that have signal, then leave out what is still flat (DAPO, arXiv 2503.14476)."""
    max_resample_rounds: int = 2
    """With dynamic_sampling=resample: extra rollout rounds per step at most (each one costs a rollout)."""

    def __post_init__(self) -> None:
        if self.num_generations < 2:
            raise ConfigError(
                f"algo.num_generations={self.num_generations}: group advantages need >= 2 completions per prompt"
            )
        if self.max_resample_rounds < 0:
            raise ConfigError(f"algo.max_resample_rounds={self.max_resample_rounds}: use 0 or more")
        if self.elbo_samples < 1 or self.num_iterations < 1:
            raise ConfigError("algo.elbo_samples and algo.num_iterations must be >= 1")
        if self.epsilon <= 0 or (self.epsilon_high is not None and self.epsilon_high <= 0):
            raise ConfigError("algo.epsilon / algo.epsilon_high must be positive")
        if not 0.0 <= self.prompt_mask_prob < 1.0:
            raise ConfigError(f"algo.prompt_mask_prob={self.prompt_mask_prob}: use a probability in [0, 1)")
        if not 0.0 <= self.negative_weight <= 1.0:
            raise ConfigError(f"algo.negative_weight={self.negative_weight}: use a value in [0, 1] (1 = the "
                              "estimator's advantages, 0 = reinforce successes only)")
        if self.beta < 0:
            raise ConfigError(f"algo.beta={self.beta}: use 0 (no KL) or a positive coefficient")
        if self.advantage == "dr_grpo" and self.scale_rewards not in (None, "none"):
            raise ConfigError("algo.advantage=dr_grpo is unscaled by definition: set algo.scale_rewards=none or null")
        if self.likelihood == "trace" and (self.prompt_mask_prob > 0 or self.resample_masks_per_iteration):
            raise ConfigError(
                "algo.likelihood=trace scores the sampler's own states, with no mask draws: set "
                "algo.prompt_mask_prob=0 and algo.resample_masks_per_iteration=false (d1's settings), or use "
                "algo.likelihood=elbo"
            )
        if self.group_masks == "shared" and self.likelihood == "trace":
            raise ConfigError("algo.group_masks=shared shares ELBO mask draws; algo.likelihood=trace draws none: set "
                              "algo.group_masks=independent or algo.likelihood=elbo")
        if self.group_masks == "shared" and self.elbo_estimator == "stratified":
            raise ConfigError("algo.group_masks=shared: the stratified estimator draws exact mask counts per row, "
                              "which completions of different lengths cannot share; use algo.elbo_estimator=coupled "
                              "or mc, or algo.group_masks=independent")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoopConfig:
    """What both training loops have (`train:` for RL, `sft:` for diffusion SFT): steps, optimiser, checkpoints.

    Each section keeps its own values, because one recipe may run both (the demo: a long full-weight SFT warm
    start at a high learning rate, then a short RL run on LoRA). `rlwork.runtime.session` reads these.
    """

    section: ClassVar[str] = "loop"
    steps: int = 20
    """Optimizer steps (RL: each one a rollout, score, advantages, likelihoods, updates, log)."""
    micro_batch_size: int = 8
    """Rows per forward/backward on one rank; gradients accumulate over the rest of the rank's rows."""
    learning_rate: float = 1e-4
    """AdamW learning rate (SFT: the peak of its schedule)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping (a non-finite norm skips the update)."""
    save_every: int = 10
    """Checkpoint every N steps (and at the end)."""
    keep_checkpoints: int = 2
    """How many recent checkpoints to keep (0 = all)."""

    def __post_init__(self) -> None:
        for name in ("steps", "micro_batch_size", "save_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{self.section}.{name}={getattr(self, name)}: must be >= 1")
        if self.learning_rate <= 0:
            raise ConfigError(f"{self.section}.learning_rate={self.learning_rate}: must be positive")
        if self.weight_decay < 0:
            raise ConfigError(f"{self.section}.weight_decay={self.weight_decay}: use 0 or a positive value")
        if not self.max_grad_norm > 0:
            raise ConfigError(f"{self.section}.max_grad_norm={self.max_grad_norm}: must be positive (a large value "
                              "= no clip)")
        if self.keep_checkpoints < 0:
            raise ConfigError(f"{self.section}.keep_checkpoints={self.keep_checkpoints}: use 0 (keep all) or a "
                              "positive count")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig(LoopConfig):
    """The RL loop (`rlwork train`); steps, optimiser and checkpoint fields as in LoopConfig."""

    section: ClassVar[str] = "train"
    prompts_per_step: int = 4
    """B prompts per step across all ranks; N = B * num_generations rows."""
    max_unscorable_steps: int = 3
    """Stop after this many consecutive steps whose rewards were all unscorable."""
    deepspeed: str | None = None
    """DeepSpeed JSON (configs/deepspeed/zero2.json ...); null = plain torch in one process. SFT uses it too."""
    table_every: int = 5
    """Log a completions table every N steps."""
    rollout_batch_size: int = 32
    """Rows sampled together in one batched generation call."""
    log_every: int = 10
    """Every N steps also log elbo/estimator_std: the spread of one completion's per-token ELBO estimate across
    independent mask draws (rl/elbo_spread.py; 4 extra forwards of one micro-batch)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("prompts_per_step", "rollout_batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name}={getattr(self, name)}: must be >= 1")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrackingConfig:
    wandb: bool = True
    """Log to W&B (offline unless you configured W&B: WANDB_MODE/WANDB_API_KEY or wandb_mode=online)."""
    wandb_project: str = "rlwork"
    """W&B project name."""
    wandb_mode: Literal["offline", "online", "disabled"] | None = None
    """Force a W&B mode; null = offline unless the environment configures W&B."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalConfig:
    num_samples: int = 8
    """Completions per problem for pass@k."""
    ks: tuple[int, ...] = (1, 8)
    """pass@k values to report."""
    dataset: str | None = None
    """Adapter of the evaluation problems (the names of data.dataset); null = data.dataset."""
    path: str | None = None
    """The evaluation problems: a local .jsonl/.json/.parquet file (evaluated whole), a local folder of split files
    (`<split>.jsonl`, `<split>.parquet`, ...) or a hub dataset name; null = the training source (data.data_files,
    data.hub_name; for humaneval the installed package). Training problems are evaluated only when `split` names
    the training split: a file source has one split, `train` (as `datasets` names it)."""
    split: str = "heldout"
    """Split of that source: synthetic: iid (held out, drawn like the training tasks), valid (the same, for choosing
    settings), heldout (new compositions), rl or train; a folder or hub dataset: one of its splits (test, ...)."""
    every_steps: int = 0
    """During `rlwork train`: pass@k of the policy on `split` after every N-th RL step and after the last one,
    logged as eval/pass@k (W&B, metrics.jsonl); 0 = off. Same samples, ks and sampler as `rlwork eval`."""
    report_splits: tuple[str, ...] = ("heldout",)
    """Demo: the splits evaluated before and after RL (all problems), reported as `<name>_pass@k_before/after` with
    name heldout for iid (the i.i.d. held-out split), compositional for heldout when iid is reported too, else the
    split's own name."""
    training_problems: int | None = 64
    """Problems per in-training evaluation: the first N of `split` (null = all). `rlwork eval` always uses all."""

    def __post_init__(self) -> None:
        if any(k > self.num_samples or k < 1 for k in self.ks):
            raise ConfigError(f"eval.ks={list(self.ks)}: each k must be in [1, eval.num_samples={self.num_samples}]")
        if self.every_steps < 0:
            raise ConfigError(f"eval.every_steps={self.every_steps}: use 0 (off) or a positive step interval")
        if self.training_problems is not None and self.training_problems < 1:
            raise ConfigError(f"eval.training_problems={self.training_problems}: use a positive count, or null "
                              "for the whole split")
        if not self.report_splits or len(set(self.report_splits)) != len(self.report_splits):
            raise ConfigError(f"eval.report_splits={list(self.report_splits)}: name one or more distinct splits, "
                              "e.g. [iid, heldout]")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SftConfig(LoopConfig):
    """Diffusion SFT (`rlwork sft`, the demo's warm start): the model's own ELBO of the data's reference solutions.

    Steps, optimiser and checkpoint fields as in LoopConfig, with SFT's defaults. Model, data (`data.split`), engine
    (`train.deepspeed`), adapter sizes (`lora`), tracking and `output_dir` come from their own sections, as for RL.
    """

    section: ClassVar[str] = "sft"
    steps: int = 300  # LoopConfig's fields with SFT's defaults: many cheap steps at a high learning rate
    micro_batch_size: int = 16  # at most the rank's slice of `batch_size`
    learning_rate: float = 2e-3
    save_every: int = 100
    batch_size: int = 16
    """Problems per optimizer step across all ranks (one global order; each rank trains on its slice)."""
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    """After a linear warm-up: cosine decay towards 0 at the last step, or constant."""
    warmup_steps: int | None = None
    """Linear warm-up steps; null = max(1, steps // 20)."""
    lora: bool = False
    """SFT's adapter switch, sized by the `lora` section; false = every weight (Stable-DiffCoder's own SFT). Separate
    from `lora.enabled` (RL's) so that one recipe can warm-start full weights and then RL-train an adapter."""
    max_eos: int = 4
    """1..max_eos EOS tokens are appended to each target, so the model learns to stop (Stable-DiffCoder SFT)."""
    samples: int = 1
    """Mask draws per target per step."""
    continue_file: float = 0.0
    """Fraction of SFT documents in which, as in a raw source file, the function is followed by the next one: the
    reference (stub and body) of the next task in the step's batch, the whole cut at `continue_window` tokens with
    no EOS, as a pretraining window cuts a file. Continuation targets only (plain code-stub prompts, data.chat=false,
    data.prompt_style=bare). A base model trained so writes on past the function about that often, into the end of
    its canvas, and a program cut there fails: the habit a base model brings to RL, which the reward can teach it to
    drop (the demo's warm start). 0 = every document ends with its function and EOS."""
    print_file: float = 0.0
    """Fraction of SFT documents written script-style: the function's last line `return EXPR` becomes
    `print(EXPR)`, as in notebooks and scripts that show a result instead of returning it (a document whose last
    line is no `return` is unchanged). Continuation targets only, like `continue_file`. A base model trained so
    prints about that often; such a function returns None and fails its tests: a habit a base model brings to RL,
    one decision shared by every task, which the reward can teach it to drop (the demo's warm start). 0 = every
    document returns."""
    continue_window: int = 56
    """Tokens after which a document that goes on is cut (no EOS); one that fits ends in EOS like any other. The
    demo's canvas, `sampler.max_new_tokens`, is 56."""
    log_every: int = 10
    """Print a one-line summary every N steps (every step goes to metrics.jsonl / W&B)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("batch_size", "max_eos", "samples", "log_every", "continue_window"):
            if getattr(self, name) < 1:
                raise ConfigError(f"sft.{name}={getattr(self, name)}: must be >= 1")
        for name in ("continue_file", "print_file"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"sft.{name}={getattr(self, name)}: a fraction of the SFT documents, must be in "
                                  "[0, 1)")
        if self.warmup_steps is not None and not 0 <= self.warmup_steps <= self.steps:
            raise ConfigError(f"sft.warmup_steps={self.warmup_steps}: use 0..sft.steps={self.steps}, or null "
                              "for 5% of the steps")

    @property
    def warmup(self) -> int:
        """Warm-up steps with the default resolved."""
        return max(1, self.steps // 20) if self.warmup_steps is None else self.warmup_steps
