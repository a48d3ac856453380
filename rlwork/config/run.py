"""The whole run's config (`RunConfig`), the published algorithm presets, and `load_config`.

Precedence, lowest first: dataclass defaults -> a YAML file from `configs/` -> dotted command-line
overrides (`algo.beta=0.01`). Every value passes through `rlwork.config.typed.build`, which rejects unknown keys
(naming the closest valid one), wrong types and contradictory values with a message that says how to fix them.

Sections hold flat values; components take those values, never the whole config.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, TypeVar

from rlwork.config.inputs import (
    BIDIRECTIONAL_FAMILIES,
    DataConfig,
    LoraConfig,
    ModelConfig,
    RewardsConfig,
    SamplerConfig,
)
from rlwork.config.loops import AlgoConfig, EvalConfig, SftConfig, TrackingConfig, TrainConfig
from rlwork.config.typed import ConfigError, build, merge, parse_overrides, read_yaml

T = TypeVar("T")


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
        if self.algo.likelihood == "trace":
            check_trace_config(self)
        for habit in ("continue_file", "print_file"):
            if getattr(self.sft, habit) > 0 and (self.data.chat or self.data.prompt_style != "bare"):
                raise ConfigError(
                    f"sft.{habit}={getattr(self.sft, habit)} with data.chat={str(self.data.chat).lower()}, "
                    f"data.prompt_style={self.data.prompt_style}: a base model's habits are planted in continuation "
                    "targets only (the body that continues a code stub); set data.chat=false and "
                    f"data.prompt_style=bare, or sft.{habit}=0"
                )
        if self.algo.beta > 0 and not self.lora.enabled and not self.algo.reference_copy:
            raise ConfigError(
                "algo.beta > 0 with lora.enabled=false: the reference is the adapter-disabled base, which full "
                "fine-tuning does not have; set algo.reference_copy=true (a frozen copy: one more model in memory), "
                "algo.beta=0, or enable LoRA"
            )


def check_trace_config(cfg: RunConfig) -> None:
    """algo.likelihood=trace is exact only where the update recomputes what the sampler computed; say what breaks."""
    if cfg.model.family in BIDIRECTIONAL_FAMILIES and cfg.sampler.use_cache:
        raise ConfigError(
            f"algo.likelihood=trace with model.family={cfg.model.family} (bidirectional) and sampler.use_cache=true: "
            "Fast-dLLM's prefix cache samples from stale keys that no fresh forward reproduces, so the trajectory "
            "cannot be scored exactly; set sampler.use_cache=false (the trace is then exact, one forward per "
            "denoising step), or use algo.likelihood=elbo. Block-causal families (stable-diffcoder, sdar, "
            "block-diffusion) score it exactly in one forward with either cache setting"
        )
    filtered = cfg.sampler.top_k is not None or (cfg.sampler.top_p is not None and cfg.sampler.top_p < 1)
    if filtered and cfg.sampler.temperature > 0 and cfg.algo.beta > 0:
        raise ConfigError(
            "algo.likelihood=trace scores the sampler's top-k/top-p distribution, which gives log-prob -inf to tokens "
            "outside the reference's nucleus: the KL is infinite there; set algo.beta=0, or sampler.top_k=null and "
            "sampler.top_p=null"
        )
    if cfg.lora.enabled and cfg.lora.dropout > 0:
        raise ConfigError(
            f"algo.likelihood=trace with lora.dropout={cfg.lora.dropout}: dropout makes the update's forward a "
            "different function from the sampler's, so the first ratio is no longer 1; set lora.dropout=0"
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
    # TraceRL (arXiv 2509.06949; Gen-Verse/dLLM-RL rl_sdar.yaml): the exact trajectory likelihood, token clip 0.2 over
    # committed tokens, z-scored group advantages, loss normalised by the maximum length, k3 beta 0.01. TraceRL's
    # KL anchors to the old policy; ours to the adapter-disabled reference on the same trajectory. Two iterations,
    # as coupled_grpo, so the clip acts and the old log-probs (from the rollout) are used.
    "trace_grpo": dict(likelihood="trace", advantage="grpo", epsilon=0.2, beta=0.01, kl_estimator="k3",
                       importance_sampling_level="token", loss_type="dr_grpo", num_iterations=2,
                       prompt_mask_prob=0.0, resample_masks_per_iteration=False),
}


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), cls: type[T] = RunConfig,
    *, base: dict[str, Any] | None = None,
) -> T:
    """Defaults <- `base` (e.g. a run's saved config) <- YAML file <- dotted overrides, validated into `cls`."""
    data = merge(merge(base or {}, read_yaml(path)), parse_overrides(overrides))
    algo = data.get("algo")
    if isinstance(algo, dict) and algo.get("preset") is not None:
        if algo["preset"] not in PRESETS:
            raise ConfigError(f"algo.preset={algo['preset']!r}: choose one of {', '.join(PRESETS)} or null")
        data["algo"] = merge(PRESETS[algo["preset"]], algo)
    return build(cls, data)
