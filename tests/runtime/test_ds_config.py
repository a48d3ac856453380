"""DeepSpeed JSON configs: our values filled in, comments dropped, leftover "auto" and unsafe settings refused."""

import json

import pytest

from rlwork.runtime.ds_config import CONFIG_DIR, OWNED_KEYS, deepspeed_config, offloads_optimizer


def test_deepspeed_config_fills_owned_values():
    cfg = deepspeed_config("zero3", micro_batch_size=2, gradient_accumulation_steps=4, max_grad_norm=0.5, bf16=False)
    assert cfg["train_micro_batch_size_per_gpu"] == 2 and cfg["gradient_accumulation_steps"] == 4
    assert cfg["gradient_clipping"] == 0.5 and cfg["zero_optimization"]["stage"] == 3
    assert cfg["bf16"] == {"enabled": False}
    assert not any(k.startswith("_") for k in cfg)
    for name in ("zero2", "zero3", "zero2_offload", "zero3_offload"):
        raw = json.loads((CONFIG_DIR / f"{name}.json").read_text())
        assert all(raw[k] == "auto" for k in OWNED_KEYS), name
    with pytest.raises(ValueError, match="still 'auto'"):
        deepspeed_config({"zero_optimization": {"stage": "auto"}}, micro_batch_size=1,
                         gradient_accumulation_steps=1, max_grad_norm=1.0, bf16=False)
    with pytest.raises(ValueError, match="check_grad_overflow"):
        deepspeed_config({"bf16": {"check_grad_overflow": False}}, micro_batch_size=1,
                         gradient_accumulation_steps=1, max_grad_norm=1.0, bf16=True)
    with pytest.raises(ValueError, match="zero2"):
        deepspeed_config("zero9", micro_batch_size=1, gradient_accumulation_steps=1, max_grad_norm=1.0, bf16=False)


def test_offload_is_read_from_the_optimizer_device():
    for name, offloads in (("zero2", False), ("zero3", False), ("zero2_offload", True), ("zero3_offload", True)):
        cfg = deepspeed_config(name, micro_batch_size=1, gradient_accumulation_steps=1, max_grad_norm=1.0, bf16=False)
        assert offloads_optimizer(cfg) is offloads, name
