"""Diffusion: what is specific to masked/block diffusion LMs, small and in one place.

Owns `masking.py` (the forward process: schedules, mask draws from a Generator), `elbo.py` (likelihood/ELBO
estimators, per token and per sequence), `sampler.py` (the batched block-diffusion sampler with its KV cache),
`sampler_ref.py` (the naive reference sampler), `trace.py` (the exact log-likelihood of a sampled trajectory) and
`rollout.py` (prompt texts -> G completions each).
May import: `rlwork.config`, `rlwork.models`.
"""
