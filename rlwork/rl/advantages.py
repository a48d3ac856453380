"""Advantage estimators for group-sampled policy gradients (GRPO family).

Shape letters: B prompts, G = ``num_generations`` completions per prompt, N = B*G rows grouped contiguously
(rows ``b*G .. b*G+G-1`` share prompt ``b``), R reward functions.

NaN semantics, shared by every function here: a NaN reward marks an *unscorable* row (every reward function
returned ``None``). Unscorable rows are left out of their group's statistics (mean, std, leave-one-out
baseline) and of the batch std, and always get advantage exactly 0. A group with fewer than two scorable rows
has no within-group comparison, so every row in it gets advantage 0: with one scorable row the centred value
``r - mean`` is exactly 0 and the leave-one-out baseline is undefined; with none there is nothing to centre.
Such groups also count as zero-std (no signal) in :func:`zero_std_groups`.

Standard deviations use Bessel's correction (``n - 1``), as ``torch.std`` and TRL's ``nanstd`` do.
"""

from typing import Literal

import torch
from torch import Tensor

Estimator = Literal["grpo", "dr_grpo", "rloo"]
Scale = Literal["group", "batch", "none"]

ESTIMATORS: tuple[str, ...] = ("grpo", "dr_grpo", "rloo")
SCALES: tuple[str, ...] = ("group", "batch", "none")
# The scaling each estimator uses in its paper when `scale` is not given.
DEFAULT_SCALE: dict[str, str] = {"grpo": "group", "dr_grpo": "none", "rloo": "none"}


def _grouped(rewards: Tensor, num_generations: int) -> Tensor:
    """View [N] rewards as [B, G], validating the shapes."""
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [N], got shape {tuple(rewards.shape)}")
    if num_generations < 1:
        raise ValueError(f"num_generations={num_generations}: must be >= 1")
    if rewards.numel() % num_generations != 0:
        raise ValueError(
            f"rewards has {rewards.numel()} rows, not a multiple of num_generations={num_generations}: "
            "rows must come in complete, contiguous groups"
        )
    return rewards.view(-1, num_generations)  # [B, G]


def group_stats(rewards: Tensor, num_generations: int) -> tuple[Tensor, Tensor, Tensor]:
    """NaN-aware per-group mean, std and count of scorable rows.

    rewards: [N]. Returns (mean [B], std [B], count [B] int64). ``mean`` is NaN for a group with no scorable
    row; ``std`` (Bessel-corrected) is 0 for a group with fewer than two scorable rows, by convention: such a
    group carries no signal.
    """
    grouped = _grouped(rewards, num_generations)  # [B, G]
    scorable = ~torch.isnan(grouped)  # [B, G]
    count = scorable.sum(dim=1)  # [B]
    filled = torch.where(scorable, grouped, torch.zeros_like(grouped))  # [B, G]
    mean = filled.sum(dim=1) / count  # [B]; 0/0 = NaN for empty groups
    sq_dev = torch.where(scorable, (grouped - mean.unsqueeze(1)) ** 2, torch.zeros_like(grouped))  # [B, G]
    var = sq_dev.sum(dim=1) / (count - 1).clamp(min=1)  # [B]
    std = torch.where(count > 1, var.sqrt(), torch.zeros_like(var))  # [B]
    return mean, std, count


def batch_std(rewards: Tensor) -> Tensor:
    """Bessel-corrected std of all scorable rewards in the batch (TRL ``scale_rewards="batch"``).

    rewards: [N]. Returns a 0-d tensor; 0 when fewer than two rows are scorable.
    """
    scorable = rewards[~torch.isnan(rewards)]
    if scorable.numel() < 2:
        return torch.zeros((), dtype=rewards.dtype, device=rewards.device)
    return scorable.std()


def batch_moments(rewards: Tensor) -> Tensor:
    """[count, sum, sum of squares] of the scorable rewards, float64 [3]. Summed over ranks (or batches), the sums
    give `std_from_moments` of all the rewards together."""
    scorable = rewards[~torch.isnan(rewards)].double()
    return torch.stack([torch.tensor(float(scorable.numel()), dtype=torch.float64), scorable.sum(),
                        (scorable**2).sum()])


def std_from_moments(moments: Tensor) -> Tensor:
    """Bessel-corrected std from `batch_moments` (possibly summed over ranks); 0 with fewer than two rewards."""
    count, total, squares = moments.double().unbind()
    if count < 2:
        return torch.zeros((), dtype=torch.float64)
    return ((squares - total**2 / count) / (count - 1)).clamp_min(0).sqrt()


def _finish(centred: Tensor, rewards: Tensor, num_generations: int, scale: str, eps: float,
            batch_scale: Tensor | None = None) -> Tensor:
    """Apply std scaling to centred [N] advantages and zero the rows that carry no signal."""
    if scale == "group":
        _, std, _ = group_stats(rewards, num_generations)
        centred = centred / (std.repeat_interleave(num_generations) + eps)  # [N]
    elif scale == "batch":
        std = batch_std(rewards) if batch_scale is None else batch_scale.to(centred.dtype)
        centred = centred / (std + eps)
    elif scale != "none":
        raise ValueError(f"scale={scale!r}: choose one of {SCALES}")
    _, _, count = group_stats(rewards, num_generations)
    no_signal = torch.isnan(rewards) | (count < 2).repeat_interleave(num_generations)  # [N]
    return centred.masked_fill(no_signal, 0.0)


def grpo_advantages(rewards: Tensor, num_generations: int, scale: Scale = "group", eps: float = 1e-4,
                    batch_scale: Tensor | None = None) -> Tensor:
    """GRPO outcome advantages, ``(r_i - mean(r_group)) / (std(r_group) + eps)`` (arXiv 2402.03300, Sec. 4.1.2).

    rewards: [N] grouped contiguously; NaN = unscorable. Returns [N]; unscorable rows and rows of groups with
    fewer than two scorable rows get 0. ``scale="batch"`` divides by the batch std instead (TRL's
    ``scale_rewards="batch"``); ``scale="none"`` is Dr.GRPO. ``eps`` is added to the std (TRL uses 1e-4).
    ``batch_scale``: the batch std to use with ``scale="batch"`` (None = this batch's own; under data parallelism
    the std over all ranks' rows, from `batch_moments` summed over ranks).
    """
    mean, _, _ = group_stats(rewards, num_generations)
    centred = rewards - mean.repeat_interleave(num_generations)  # [N]
    return _finish(centred, rewards, num_generations, scale, eps, batch_scale)


def dr_grpo_advantages(rewards: Tensor, num_generations: int) -> Tensor:
    """Dr.GRPO advantages: centred on the group mean, not divided by the std (arXiv 2503.20783, Sec. 3.2).

    Dropping the std removes the question-difficulty bias: groups that are nearly all right or all wrong are
    no longer up-weighted. rewards: [N], NaN = unscorable. Returns [N] with the NaN rules of this module.
    """
    return grpo_advantages(rewards, num_generations, scale="none")


def rloo_advantages(rewards: Tensor, num_generations: int, scale: Scale = "none", eps: float = 1e-4,
                    batch_scale: Tensor | None = None) -> Tensor:
    """REINFORCE leave-one-out: ``r_i - mean_{j != i} r_j`` within the group (arXiv 2402.14740, Sec. 3).

    Used by DiffuCoder and ESPO. Over the k scorable rows of a group this equals ``k/(k-1) * (r_i - mean)``.
    rewards: [N], NaN = unscorable (left out of the baselines of the others). Returns [N]; groups with fewer
    than two scorable rows get 0 (no other row to form a baseline). ``scale`` optionally divides by the group
    or batch std, as for GRPO.
    """
    grouped = _grouped(rewards, num_generations)  # [B, G]
    scorable = ~torch.isnan(grouped)  # [B, G]
    count = scorable.sum(dim=1, keepdim=True)  # [B, 1]
    total = torch.where(scorable, grouped, torch.zeros_like(grouped)).sum(dim=1, keepdim=True)  # [B, 1]
    baseline = (total - grouped) / (count - 1).clamp(min=1)  # [B, G]
    centred = (grouped - baseline).reshape(-1)  # [N]
    return _finish(centred, rewards, num_generations, scale, eps, batch_scale)


def compute_advantages(
    rewards: Tensor,
    num_generations: int,
    estimator: Estimator = "grpo",
    scale: Scale | None = None,
    eps: float = 1e-4,
    batch_scale: Tensor | None = None,
) -> Tensor:
    """One entry point for the estimators above (``batch_scale``: see `grpo_advantages`).

    rewards: [N] (the weighted total of the reward functions); NaN = unscorable. Returns [N].
    estimator: ``"grpo"`` (group mean baseline), ``"dr_grpo"`` (group mean, never scaled), ``"rloo"``
    (leave-one-out baseline). scale: ``"group"``, ``"batch"`` or ``"none"``; ``None`` picks the estimator's
    paper default (grpo: group, dr_grpo: none, rloo: none).
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator={estimator!r}: choose one of {ESTIMATORS}")
    scale = DEFAULT_SCALE[estimator] if scale is None else scale
    if scale not in SCALES:
        raise ValueError(f"scale={scale!r}: choose one of {SCALES}")
    if estimator == "dr_grpo":
        if scale != "none":
            raise ValueError(
                f"estimator='dr_grpo' with scale={scale!r}: Dr.GRPO is defined without std scaling; "
                "use estimator='grpo' to scale, or scale='none'"
            )
        return dr_grpo_advantages(rewards, num_generations)
    if estimator == "rloo":
        return rloo_advantages(rewards, num_generations, scale=scale, eps=eps, batch_scale=batch_scale)
    return grpo_advantages(rewards, num_generations, scale=scale, eps=eps, batch_scale=batch_scale)


def weight_negatives(advantages: Tensor, weight: float) -> Tensor:
    """Advantages [N] with the negative ones multiplied by ``weight`` (1 = unchanged, 0 = reinforce successes only).

    With weight 0 the update raises the likelihood of the completions that beat their group and pushes nothing
    down (the KL term still acts): reward-filtered self-imitation (RAFT, arXiv 2304.06767; RAFT++, arXiv
    2504.11343). For a diffusion policy the push-down half acts through a bound under random masks, so on the tokens
    a wrong completion shares with the right ones its gradient cancels theirs only on average.
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight={weight}: use a value in [0, 1]")
    return torch.where(advantages < 0, advantages * weight, advantages)


def zero_std_groups(rewards: Tensor, num_generations: int, atol: float = 0.0) -> Tensor:
    """Groups whose scorable rewards are all equal (within ``atol``), so every advantage in them is 0.

    rewards: [N]. Returns [B] bool. A group with fewer than two scorable rows also counts (no signal).
    """
    grouped = _grouped(rewards, num_generations)  # [B, G]
    scorable = ~torch.isnan(grouped)  # [B, G]
    hi = torch.where(scorable, grouped, torch.full_like(grouped, -torch.inf)).amax(dim=1)  # [B]
    lo = torch.where(scorable, grouped, torch.full_like(grouped, torch.inf)).amin(dim=1)  # [B]
    return (scorable.sum(dim=1) < 2) | ((hi - lo) <= atol)


def frac_zero_std(rewards: Tensor, num_generations: int, atol: float = 0.0) -> Tensor:
    """Fraction of groups without signal, logged as ``reward/frac_zero_std``. rewards: [N]. Returns 0-d float."""
    return zero_std_groups(rewards, num_generations, atol).float().mean()


def rows_with_signal(rewards: Tensor, num_generations: int, atol: float = 0.0) -> Tensor:
    """Row indices of the groups that carry signal: DAPO dynamic sampling (arXiv 2503.14476, Sec. 3.2, Eq. 11).

    rewards: [N]. Returns [M] int64 row indices, M a multiple of G, whole groups in their original order, so
    ``x[idx]`` stays contiguously grouped. Unscorable rows inside a kept group are kept (their advantage is 0).
    Refilling the batch with new prompts is the trainer's job; `refill_rows` picks the rows that replace flat groups.
    """
    keep = ~zero_std_groups(rewards, num_generations, atol)  # [B]
    return torch.nonzero(keep.repeat_interleave(num_generations), as_tuple=False).flatten()


def refill_rows(rewards: Tensor, extra_rewards: Tensor, num_generations: int) -> Tensor:
    """Row indices into [rows, extra rows] that put extra groups with signal in place of flat groups (in order).

    rewards: [N], extra_rewards: [M] (both grouped contiguously by num_generations). Returns [N] int64.
    """
    G = num_generations
    flat = zero_std_groups(rewards, G).tolist()  # [B]
    donors = [g for g, is_flat in enumerate(zero_std_groups(extra_rewards, G).tolist()) if not is_flat]
    rows = []
    for g, is_flat in enumerate(flat):
        source = len(rewards) + donors.pop(0) * G if is_flat and donors else g * G
        rows.extend(range(source, source + G))
    return torch.tensor(rows)


def reward_metrics(
    rewards: Tensor,
    num_generations: int,
    rewards_per_func: Tensor | None = None,
    reward_names: list[str] | None = None,
) -> dict[str, Tensor]:
    """Step metrics for the logger, as 0-d tensors (reduce across ranks before logging).

    rewards: [N] combined reward (NaN = unscorable); rewards_per_func: [N, R] with ``reward_names`` (R names).
    Keys: ``reward/mean`` and ``reward/std`` over scorable rows (NaN if none), ``reward/frac_unscorable``,
    ``reward/frac_zero_std``, and ``reward/<name>/mean`` and ``reward/<name>/std`` (Bessel-corrected, 0 below two
    values) over the rows that function scored (mean NaN if none). TRL logs the same as ``reward``, ``reward_std``,
    ``rewards/<name>/mean|std`` (runtime/trl_names.py).
    """
    scorable = ~torch.isnan(rewards)
    metrics = {
        "reward/mean": rewards[scorable].mean(),
        "reward/std": batch_std(rewards),
        "reward/frac_unscorable": (~scorable).float().mean(),
        "reward/frac_zero_std": frac_zero_std(rewards, num_generations),
    }
    if rewards_per_func is not None:
        if reward_names is None or len(reward_names) != rewards_per_func.shape[1]:
            raise ValueError(f"reward_names={reward_names}: give one name per column of rewards_per_func")
        for name, column in zip(reward_names, rewards_per_func.unbind(dim=1), strict=True):
            metrics[f"reward/{name}/mean"] = torch.nanmean(column)
            metrics[f"reward/{name}/std"] = batch_std(column)
    return metrics
