"""DeepSpeed JSON configs: read one from `configs/deepspeed/` (or a path, or a dict) and fill in our values.

Values our config owns (`OWNED_KEYS`: micro-batch size, gradient accumulation, gradient clipping) are `"auto"` in
the JSON files and filled here; bf16 is switched on for CUDA and off on CPU. Keys starting with "_" are comments.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "deepspeed"
OWNED_KEYS = ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping")
"""DeepSpeed config keys our config owns: `"auto"` in the JSON files, filled by `deepspeed_config`."""


def deepspeed_config(
    config: str | Path | dict,
    *,
    micro_batch_size: int,
    gradient_accumulation_steps: int,
    max_grad_norm: float,
    bf16: bool,
) -> dict:
    """A DeepSpeed config dict from a JSON path (or a name in configs/deepspeed/, e.g. "zero2") with our values.

    Keys starting with "_" (comments) are dropped. Any `"auto"` left after filling is an error.
    """
    if isinstance(config, dict):
        raw = copy.deepcopy(config)
    else:
        path = Path(config)
        if not path.suffix:
            path = CONFIG_DIR / f"{path}.json"
        if not path.is_file():
            names = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.json")))
            raise ValueError(f"deepspeed config {config}: no such file; use a path or one of {names}")
        raw = json.loads(path.read_text())
    cfg = _drop_comments(raw)
    cfg.update(
        train_micro_batch_size_per_gpu=micro_batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps,
        gradient_clipping=max_grad_norm,
    )
    cfg.pop("train_batch_size", None)  # derived by DeepSpeed: micro * accumulation * data-parallel ranks
    cfg["bf16"] = {**cfg.get("bf16", {}), "enabled": bf16}
    if bf16 and cfg["bf16"].get("check_grad_overflow") is False:
        raise ValueError(f"deepspeed config {config}: bf16.check_grad_overflow=false would let non-finite gradients "
                         "reach the weights; remove it")
    left = _auto_keys(cfg)
    if left:
        raise ValueError(f"deepspeed config {config}: {', '.join(left)} still 'auto'; set them in the JSON")
    return cfg


def offloads_optimizer(cfg: dict) -> bool:
    """Whether a filled config puts the optimizer state on the CPU (it then needs DeepSpeedCPUAdam)."""
    device = cfg.get("zero_optimization", {}).get("offload_optimizer", {}).get("device", "none")
    return device not in (None, "none")


def _drop_comments(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_comments(v) for k, v in value.items() if not k.startswith("_")}
    return value


def _auto_keys(cfg: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in cfg.items():
        if isinstance(value, dict):
            out += _auto_keys(value, f"{prefix}{key}.")
        elif value == "auto":
            out.append(prefix + key)
    return out
