"""RL: the GRPO-family loop and its phases.

Owns `trainer.py` (the loop only: numbered, timed phases), `scoring.py` (phase 2: rewards -> tensors),
`advantages.py` (phase 3, pure), `likelihoods.py` (phase 4: old/reference log-probs, ELBO under shared mask draws
or the trace), `elbo_spread.py` (the ELBO estimator's spread over mask draws, logged every train.log_every steps),
`update.py` (phase 5: the clipped policy-gradient passes), `losses.py` (pure losses and KL estimators) and
`rescore.py` (re-scoring saved rollouts without generating).
May import everything below it: `rlwork.config`, `data`, `models`, `diffusion`, `runtime`, `evaluation`, and
`rewards`. Never imports `rlwork.sft`.
"""
