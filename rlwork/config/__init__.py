"""Configuration: typed, frozen dataclasses are the only source of defaults (the lowest layer of rlwork).

Owns `inputs.py` and `loops.py` (one frozen dataclass per config section), `run.py` (`RunConfig`, the algorithm
presets, `load_config`) and `typed.py` (the generic plain-data -> dataclass machinery: YAML, dotted overrides,
validation errors). Imports nothing of rlwork.
Everything a user or another package needs is re-exported here: `from rlwork.config import RunConfig, load_config`.
"""

from rlwork.config.inputs import DataConfig, LoraConfig, ModelConfig, RewardsConfig, SamplerConfig
from rlwork.config.loops import AlgoConfig, EvalConfig, LoopConfig, SftConfig, TrackingConfig, TrainConfig
from rlwork.config.run import PRESETS, RunConfig, load_config
from rlwork.config.typed import ConfigError, to_dict

__all__ = [
    "PRESETS", "AlgoConfig", "ConfigError", "DataConfig", "EvalConfig", "LoopConfig", "LoraConfig", "ModelConfig",
    "RewardsConfig", "RunConfig", "SamplerConfig", "SftConfig", "TrackingConfig", "TrainConfig", "load_config",
    "to_dict",
]
