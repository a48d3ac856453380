"""Evaluation: pass@k of a policy on a problem split, in the sandbox.

Owns `passk.py` (the unbiased pass@k estimator and tables) and `eval.py` (sampling n completions per problem,
scoring them with `rewards`, the base-vs-trained report, and the rank-sharded evaluation used during training).
May import: `rlwork.config`, `rlwork.data`, `rlwork.models`, `rlwork.diffusion`, `rlwork.runtime`, `rewards`.
"""
