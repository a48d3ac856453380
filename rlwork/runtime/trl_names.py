"""rlwork's metric names -> the names TRL logs for the same quantities, so W&B reports built for TRL runs work on ours.

TRL's GRPOTrainer and SFTTrainer (trl 1.16) log through transformers' W&B callback, which prefixes `train/` and plots
against `train/global_step`: a TRL dashboard reads `train/reward`, `train/kl`, `train/rewards/<fn>/mean`. The W&B
tracker logs these aliases beside our own `section/name` keys (metrics.jsonl keeps one name per quantity), with
`train/global_step` = step + 1 (optimizer steps done, as the HF Trainer counts them).

    rlwork                               TRL (under train/ in W&B)
    reward/mean, reward/std              reward, reward_std            (over scorable rows; std with Bessel)
    reward/<fn>/mean, reward/<fn>/std    rewards/<fn>/mean, rewards/<fn>/std
    reward/frac_zero_std                 frac_reward_zero_std
    policy/kl                            kl
    policy/entropy                       entropy                       (ours: at the masked positions of the ELBO
                                                                        forward, the diffusion policy's predictions;
                                                                        with algo.likelihood=trace, the sampler's
                                                                        distribution at each token's decision)
    policy/clipfrac_low|high             clip_ratio/low_mean, clip_ratio/high_mean
    policy/clipfrac                      clip_ratio/region_mean
    policy/loss, sft/loss                loss
    completion/len_mean|min|max          completions/mean_length, min_length, max_length
    1 - completion/eos_frac              completions/clipped_ratio     (no EOS within max_new_tokens)
    completion/terminated_len_*          completions/mean|min|max_terminated_length
    optim/grad_norm, optim/lr            grad_norm, learning_rate
    sft/epoch                            epoch

Not mapped: TRL's `clip_ratio/low_min` and `high_max` (a min/max over processes; our metrics are means over ranks)
and `num_tokens` (cumulative). Diffusion-specific metrics (`elbo/*`, `sandbox/*`, `perf/*`, `eval/*`, ...) have no
TRL twin and keep their own namespace.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

PREFIX = "train/"
STEP_KEY = "train/global_step"

TRL_NAMES: dict[str, str | tuple[str, Callable[[float], float]]] = {
    "reward/mean": "reward",
    "reward/std": "reward_std",
    "reward/frac_zero_std": "frac_reward_zero_std",
    "policy/kl": "kl",
    "policy/entropy": "entropy",
    "policy/clipfrac_low": "clip_ratio/low_mean",
    "policy/clipfrac_high": "clip_ratio/high_mean",
    "policy/clipfrac": "clip_ratio/region_mean",
    "policy/loss": "loss",
    "sft/loss": "loss",
    "completion/len_mean": "completions/mean_length",
    "completion/len_min": "completions/min_length",
    "completion/len_max": "completions/max_length",
    "completion/eos_frac": ("completions/clipped_ratio", lambda eos_frac: 1.0 - eos_frac),
    "completion/terminated_len_mean": "completions/mean_terminated_length",
    "completion/terminated_len_min": "completions/min_terminated_length",
    "completion/terminated_len_max": "completions/max_terminated_length",
    "optim/grad_norm": "grad_norm",
    "optim/lr": "learning_rate",
    "sft/epoch": "epoch",
}
"""Our key -> TRL's key, or (TRL's key, how to compute its value from ours)."""

PER_REWARD = re.compile(r"^reward/(?P<fn>.+)/(?P<stat>mean|std)$")


def trl_aliases(metrics: Mapping[str, float], step: int) -> dict[str, float]:
    """The TRL-named copies of `metrics` (under `train/`), plus `train/global_step` = step + 1.

    >>> trl_aliases({"reward/mean": 0.5, "reward/unit_tests/std": 0.1, "elbo/std": 2.0}, 3)
    {'train/reward': 0.5, 'train/rewards/unit_tests/std': 0.1, 'train/global_step': 4}
    """
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = TRL_NAMES.get(key)
        if name is None:
            match = PER_REWARD.match(key)
            if match:
                out[f"{PREFIX}rewards/{match['fn']}/{match['stat']}"] = value
            continue
        if isinstance(name, tuple):
            name, compute = name
            value = compute(float(value))
        out[PREFIX + name] = value
    out[STEP_KEY] = step + 1
    return out
