"""Diffusion SFT: the model's own ELBO of reference solutions (the demo's warm start, `rlwork sft`).

Owns `objective.py` (targets, batches, the negative ELBO, the learning-rate schedule) and `trainer.py` (the loop).
May import: `rlwork.config`, `data`, `models`, `diffusion`, `runtime`. Never imports `rlwork.rl`.
"""
