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

from rlwork.config.inputs import DataConfig, LoraConfig, ModelConfig, RewardsConfig, SamplerConfig
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
