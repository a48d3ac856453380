"""Typed configuration: frozen dataclasses are the only source of defaults.

Precedence, lowest first: dataclass defaults -> a YAML file from `configs/` -> dotted command-line
overrides (`algo.beta=0.01`). Every value passes through `rlwork.typed_config.build`, which rejects unknown keys
(naming the closest valid one), wrong types and contradictory values with a message that says how to fix them.

Sections hold flat values; components take those values, never the whole config.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal, TypeVar

from rlwork.typed_config import ConfigError, build, merge, parse_overrides, read_yaml

T = TypeVar("T")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
    path: str = "tiny"
    """HF checkpoint folder or hub name; `tiny` / `tiny-bidirectional` = an embedded tiny coder (built once); or an
    rlwork run/checkpoint folder (e.g. an SFT warm start): its weights merged into its base (rlwork.policies)."""
    family: Literal[
        "stable-diffcoder", "sdar", "llada", "dream", "diffucoder",
        "block-diffusion", "masked-diffusion", "masked-diffusion-shifted",
    ] = "stable-diffcoder"
    """Family preset: mask/eos/pad ids, attention kind, block size, logit shift (checked against the checkpoint)."""
    trust_remote_code: bool = False
    """Allow the checkpoint's own modelling code (needed for the real Stable-DiffCoder/Dream/LLaDA checkpoints)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Parameter dtype. bf16 on GPU; float32 on CPU."""
    device: str = "cpu"
    """torch device string, e.g. `cpu`, `cuda`, `cuda:1`."""
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    """Attention kernel. FlashAttention-2 cannot take the 4-D block-causal mask, so it is not offered."""
    block_size: int | None = None
    """Override the family's block size (block-causal families only); None = the preset's."""
    flush_denormal: bool = True
    """CPU: flush subnormal floats (below 1.2e-38) to zero in this process (`torch.set_flush_denormal`). A model in
    training grows subnormal activations and gradients, and CPU arithmetic on them is many times slower: with them
    kept, the tiny coder's SFT step slowed from 3.7 to 2.4 steps/s as it trained. Values that small do not move a
    log-probability or an update. false = IEEE subnormals. No effect on GPU kernels."""

    def __post_init__(self) -> None:
        if self.block_size is not None and self.block_size < 1:
            raise ConfigError(f"model.block_size={self.block_size}: use a positive block size or null for the preset")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoraConfig:
    enabled: bool = True
    """Train LoRA adapters (peft); false = full fine-tuning of every weight."""
    r: int = 16
    """Adapter rank."""
    alpha: int = 32
    """LoRA scaling numerator (scale = alpha / r)."""
    dropout: float = 0.0
    """Dropout on the adapter input."""
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    """Module names that get adapters (Llama naming)."""

    def __post_init__(self) -> None:
        if self.r < 1 or self.alpha <= 0:
            raise ConfigError(f"lora.r={self.r}, lora.alpha={self.alpha}: both must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.dropout={self.dropout}: use a probability in [0, 1)")
        if self.enabled and not self.target_modules:
            raise ConfigError("lora.target_modules is empty: name at least one module, e.g. [q_proj, v_proj]")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConfig:
    dataset: str = "synthetic"
    """Adapter: synthetic, humaneval, mbpp, mbpp_plus, apps, codecontests, acecode, kodcode (see rlwork.adapters)."""
    # With `columns` set, rows are mapped by that column mapping instead (rlwork.data "mapped").
    data_files: tuple[str, ...] = ()
    """Local JSONL/parquet files (or a hub name in `hub_name`) for file-based adapters."""
    hub_name: str | None = None
    """A datasets hub name, for users with network access."""
    split: str = "train"
    """Split to read."""
    columns: dict[str, str] = dataclasses.field(default_factory=dict)
    """Column mapping onto our schema, e.g. {prompt: question, tests: test_list}."""
    chat: bool = True
    """Render prompts through the tokenizer's chat template (Instruct-style)."""
    prompt_style: Literal["instruct", "bare"] = "instruct"
    """instruct: the problem wrapped in an instruction and the answer format (for Instruct checkpoints);
    bare: the problem's own text alone (a model fine-tuned on exactly that format, like the tiny demo coder)."""
    skip_malformed: bool = False
    """Skip (and count) malformed rows instead of failing on the first one."""
    synthetic_train: int = 256
    """Synthetic family: number of training tasks."""
    synthetic_heldout: int = 64
    """Synthetic family: tasks in each evaluation split: heldout (compositional: new compositions, never seen in
    training), iid (the training distribution, each task unseen in training) and valid (drawn like iid, disjoint
    from it: choose settings on valid, report iid)."""
    synthetic_fresh: bool = False
    """Synthetic family: the train split is `synthetic_train` i.i.d. draws from the generator (a fresh task in every
    SFT batch when it is sft.steps x sft.batch_size) instead of that many distinct tasks repeated each epoch."""
    synthetic_train_mix: tuple[float, ...] | None = None
    """Synthetic family, synthetic_fresh=true: weights of 1-, 2- and 3-step compositions among the SFT draws; null =
    the generator's own (0.2, 0.45, 0.35). iid/valid/rl keep the generator's."""
    synthetic_rl: int = 1024
    """Synthetic family: size of the `rl` split (RL prompts): programs never in training, drawn like iid/valid."""
    rl_split: str | None = None
    """Demo: the split RL draws its prompts from (e.g. rl); null = data.split (the warm start's)."""


REMASKING = ("low_confidence", "random", "margin", "entropy", "left_to_right")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplerConfig:
    """The batched block-diffusion sampler's settings (rlwork.diffusion.sampler.generate takes this object)."""

    max_new_tokens: int = 64
    """L: completion tokens per row."""
    steps_per_block: int = 4
    """Denoising steps per block; the block's masked tokens are spread evenly over them (earlier steps get more)."""
    block_size: int | None = None
    """Semi-AR block length. None: the model's block (block-causal) or the whole completion (bidirectional)."""
    temperature: float = 1.0
    """0 = greedy; > 0 samples by Gumbel-max in float64 and needs a torch.Generator."""
    top_k: int | None = None
    """Keep the k most likely tokens before sampling (temperature > 0 only)."""
    top_p: float | None = None
    """Nucleus filter before sampling (temperature > 0 only)."""
    remasking: Literal["low_confidence", "random", "margin", "entropy", "left_to_right"] = "low_confidence"
    """Which masked tokens a step commits: low_confidence | margin | entropy | random | left_to_right (the leftmost
    ones: within a block, the autoregressive order)."""
    threshold: float | None = None
    """Parallel decoding: also commit every masked token whose confidence reaches this (low_confidence, margin)."""
    use_cache: bool = True
    """Block-causal: exact KV cache. Bidirectional: Fast-dLLM prefix cache (approximate); False = exact."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError(f"sampler.max_new_tokens={self.max_new_tokens}: generate at least 1 token")
        if self.steps_per_block < 1:
            raise ConfigError(f"sampler.steps_per_block={self.steps_per_block}: use at least 1 step per block")
        if self.block_size is not None and self.block_size < 1:
            raise ConfigError(f"sampler.block_size={self.block_size}: use a positive block size or null")
        if self.temperature < 0:
            raise ConfigError(f"sampler.temperature={self.temperature}: use 0 (greedy) or a positive value")
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError(f"sampler.top_k={self.top_k}: use null (off) or k >= 1")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ConfigError(f"sampler.top_p={self.top_p}: use null (off) or a value in (0, 1]")
        if self.remasking not in REMASKING:
            raise ConfigError(f"sampler.remasking='{self.remasking}': choose one of {', '.join(REMASKING)}")
        if self.threshold is not None:
            if self.remasking not in ("low_confidence", "margin"):
                raise ConfigError(
                    f"threshold decoding compares a probability with the threshold; remasking='{self.remasking}' "
                    "gives none: use sampler.remasking='low_confidence' or 'margin', or sampler.threshold=null"
                )
            if not 0 <= self.threshold <= 1:
                raise ConfigError(f"sampler.threshold={self.threshold}: use a probability in [0, 1] or null")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RewardsConfig:
    functions: tuple[str, ...] = ("unit_tests", "format")
    """Reward names from rewards.registry, or dotted import paths (`pkg.mod:fn`)."""
    weights: tuple[float, ...] = (1.0, 0.1)
    """One weight per function; the scalar reward is their weighted sum."""
    timeout_s: float = 5.0
    """Wall-clock limit per program in the sandbox."""
    workers: int | None = None
    """Sandbox pool size; null = sized to the machine."""
    allow_weak_isolation: bool = False
    """Run without the strong sandbox layers when the kernel lacks them (logged loudly)."""

    def __post_init__(self) -> None:
        if not self.functions:
            raise ConfigError("rewards.functions is empty: name at least one reward, e.g. [unit_tests]")
        if len(self.weights) != len(self.functions):
            raise ConfigError(
                f"rewards.weights has {len(self.weights)} values for {len(self.functions)} functions: give one each"
            )
        if self.timeout_s <= 0:
            raise ConfigError(f"rewards.timeout_s={self.timeout_s}: use a positive number of seconds")


@dataclasses.dataclass(frozen=True, kw_only=True)
class AlgoConfig:
    preset: Literal["coupled_grpo", "espo", "d1"] | None = None
    """Published recipe whose values sit under this file's (see PRESETS); null = dataclass defaults only."""
    num_generations: int = 8
    """G completions per prompt (TRL's name)."""
    elbo_estimator: Literal["mc", "coupled", "stratified", "one_step"] = "coupled"
    """Likelihood estimator; one_step is d1's biased baseline."""
    elbo_samples: int = 1
    """Mask draws per completion (pairs for coupled/stratified)."""
    prompt_mask_prob: float = 0.0
    """Also mask prompt tokens with this probability (d1 uses 0.15)."""
    advantage: Literal["grpo", "dr_grpo", "rloo"] = "rloo"
    """Advantage estimator."""
    scale_rewards: Literal["group", "batch", "none"] | None = None
    """Std scaling of advantages; null = the estimator's paper default."""
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
        if self.beta < 0:
            raise ConfigError(f"algo.beta={self.beta}: use 0 (no KL) or a positive coefficient")
        if self.advantage == "dr_grpo" and self.scale_rewards not in (None, "none"):
            raise ConfigError("algo.advantage=dr_grpo is unscaled by definition: set algo.scale_rewards=none or null")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    steps: int = 20
    """RL steps (each: rollout, score, advantages, likelihoods, updates, log)."""
    prompts_per_step: int = 4
    """B prompts per step across all ranks; N = B * num_generations rows."""
    micro_batch_size: int = 8
    """Rows per forward/backward in the update phase (gradient accumulation over the rest)."""
    learning_rate: float = 1e-4
    """AdamW learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping."""
    save_every: int = 10
    """Checkpoint every N steps (and at the end)."""
    keep_checkpoints: int = 2
    """How many recent checkpoints to keep."""
    max_unscorable_steps: int = 3
    """Stop after this many consecutive steps whose rewards were all unscorable."""
    deepspeed: str | None = None
    """DeepSpeed JSON (configs/deepspeed/zero2.json ...); null = plain torch in one process."""
    table_every: int = 5
    """Log a completions table every N steps."""
    rollout_batch_size: int = 32
    """Rows sampled together in one batched generation call."""

    def __post_init__(self) -> None:
        for name in ("steps", "prompts_per_step", "micro_batch_size", "save_every", "rollout_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name}={getattr(self, name)}: must be >= 1")
        if self.learning_rate <= 0:
            raise ConfigError(f"train.learning_rate={self.learning_rate}: must be positive")


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
    split: str = "heldout"
    """Which split to evaluate (synthetic: train or heldout)."""
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


@dataclasses.dataclass(frozen=True, kw_only=True)
class SftConfig:
    """Diffusion SFT (`rlwork sft`, the demo's warm start): the model's own ELBO of the data's reference solutions.

    Model, data (`data.split`), engine (`train.deepspeed`), adapter sizes (`lora`), tracking and `output_dir` come
    from their own sections, as for RL.
    """

    steps: int = 300
    """Optimizer steps."""
    batch_size: int = 16
    """Problems per optimizer step across all ranks (one global order; each rank trains on its slice)."""
    micro_batch_size: int = 16
    """Rows per forward/backward on one rank (at most its slice); gradients accumulate over the rest of the slice."""
    learning_rate: float = 2e-3
    """AdamW peak learning rate (linear warm-up, then `lr_schedule`)."""
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    """After warm-up: cosine decay towards 0 at the last step, or constant."""
    warmup_steps: int | None = None
    """Linear warm-up steps; null = max(1, steps // 20)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping (a non-finite norm skips the update)."""
    lora: bool = False
    """Train LoRA adapters sized by the `lora` section; false = every weight (Stable-DiffCoder's own SFT)."""
    max_eos: int = 4
    """1..max_eos EOS tokens are appended to each target, so the model learns to stop (Stable-DiffCoder SFT)."""
    samples: int = 1
    """Mask draws per target per step."""
    save_every: int = 100
    """Checkpoint every N steps (and at the end)."""
    keep_checkpoints: int = 2
    """How many recent checkpoints to keep (0 = all)."""
    log_every: int = 10
    """Print a one-line summary every N steps (every step goes to metrics.jsonl / W&B)."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "micro_batch_size", "max_eos", "samples", "save_every", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"sft.{name}={getattr(self, name)}: must be >= 1")
        if self.learning_rate <= 0:
            raise ConfigError(f"sft.learning_rate={self.learning_rate}: must be positive")
        if self.warmup_steps is not None and not 0 <= self.warmup_steps <= self.steps:
            raise ConfigError(f"sft.warmup_steps={self.warmup_steps}: use 0..sft.steps={self.steps}, or null "
                              "for 5% of the steps")
        if self.weight_decay < 0:
            raise ConfigError(f"sft.weight_decay={self.weight_decay}: use 0 or a positive value")
        if not self.max_grad_norm > 0:
            raise ConfigError(f"sft.max_grad_norm={self.max_grad_norm}: must be positive (a large value = no clip)")
        if self.keep_checkpoints < 0:
            raise ConfigError(f"sft.keep_checkpoints={self.keep_checkpoints}: use 0 (keep all) or a positive count")

    @property
    def warmup(self) -> int:
        """Warm-up steps with the default resolved."""
        return max(1, self.steps // 20) if self.warmup_steps is None else self.warmup_steps


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Everything one `rlwork` command reads."""

    seed: int = 0
    """Seed for every torch.Generator the run creates (sampling, masking, data order)."""
    output_dir: str = "runs/default"
    """Run folder: checkpoints, metrics.jsonl, rollouts, W&B offline files."""
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    lora: LoraConfig = dataclasses.field(default_factory=LoraConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    sampler: SamplerConfig = dataclasses.field(default_factory=SamplerConfig)
    rewards: RewardsConfig = dataclasses.field(default_factory=RewardsConfig)
    algo: AlgoConfig = dataclasses.field(default_factory=AlgoConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    tracking: TrackingConfig = dataclasses.field(default_factory=TrackingConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    sft: SftConfig = dataclasses.field(default_factory=SftConfig)

    def __post_init__(self) -> None:
        if self.algo.beta > 0 and not self.lora.enabled and not self.algo.reference_copy:
            raise ConfigError(
                "algo.beta > 0 with lora.enabled=false: the reference is the adapter-disabled base, which full "
                "fine-tuning does not have; set algo.reference_copy=true (a frozen copy: one more model in memory), "
                "algo.beta=0, or enable LoRA"
            )


# Published recipes on our code (FIELD-NOTES.md). Values sit under the YAML file and command line.
PRESETS: dict[str, dict[str, Any]] = {
    # DiffuCoder coupled-GRPO (arXiv 2506.20639): complementary masks, token clip 0.5, k3 beta 0.01, LOO advantage.
    "coupled_grpo": dict(elbo_estimator="coupled", advantage="rloo", epsilon=0.5, beta=0.01, kl_estimator="k3",
                         importance_sampling_level="token", num_iterations=2, resample_masks_per_iteration=False),
    # ESPO: sequence-level ELBO ratio, stratified mask counts + complementary pass, clip 0.2, k2 beta 0.01, LOO.
    "espo": dict(elbo_estimator="stratified", elbo_samples=2, advantage="rloo", epsilon=0.2, beta=0.01,
                 kl_estimator="k2", importance_sampling_level="sequence", resample_masks_per_iteration=False),
    # d1 / diffu-GRPO (arXiv 2504.12216): one fully-masked forward, prompt masking 0.15, clip 0.5, k3 beta 0.04.
    "d1": dict(elbo_estimator="one_step", prompt_mask_prob=0.15, advantage="grpo", epsilon=0.5, beta=0.04,
               kl_estimator="k3", importance_sampling_level="token", resample_masks_per_iteration=True),
}


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), cls: type[T] = RunConfig
) -> T:
    """Defaults <- YAML file <- dotted overrides, validated into `cls`."""
    data = merge(read_yaml(path), parse_overrides(overrides))
    algo = data.get("algo")
    if isinstance(algo, dict) and algo.get("preset") is not None:
        if algo["preset"] not in PRESETS:
            raise ConfigError(f"algo.preset={algo['preset']!r}: choose one of {', '.join(PRESETS)} or null")
        data["algo"] = merge(PRESETS[algo["preset"]], algo)
    return build(cls, data)
