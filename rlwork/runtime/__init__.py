"""Runtime: what a training run stands on; nothing algorithmic.

Owns `dist.py` (process group, rank helpers, collectives), `ds_config.py` (DeepSpeed JSON filling), `engine.py`
(peft LoRA, the reference policy, the torch/DeepSpeed engine), `checkpoint.py` (atomic save/resume, merged
export), `tracking.py` (JSONL/W&B loggers, rollout store), `policies.py` (the starting model: base, base + a
checkpoint, or a run folder), `session.py` (one setup of model, adapter, engine, data, tracking and resume, shared
by SFT and RL), `timing.py` (phase timers) and `rng.py` (randomness keyed by global row).
May import: `rlwork.config`, `rlwork.data`, `rlwork.models`, `rlwork.diffusion`.
"""
