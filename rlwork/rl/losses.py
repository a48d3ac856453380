"""Policy-gradient losses on ELBO likelihoods: importance ratios, PPO clipping, KL estimators, aggregation.

Shape letters: N rows (completions), L completion length. For a diffusion model, ``per_token_logps[i, t]`` is
token t's contribution to row i's ELBO (a lower bound on log p, not an exact log-probability); the sequence
ELBO is the masked sum over tokens. Old, current and reference values of one step must come from the same
mask draws, or their differences are dominated by Monte-Carlo noise.

NaN semantics: positions where ``completion_mask`` is False are replaced by 0 before any arithmetic, so
non-finite padding never reaches the loss or the gradient. A non-finite value at a real token propagates to
the loss on purpose; the trainer checks :func:`all_finite` and skips the update.
"""

from collections.abc import Iterable
from typing import Literal

import torch
from torch import Tensor

KLEstimator = Literal["k1", "k2", "k3"]
ImportanceLevel = Literal["token", "sequence"]
LossType = Literal["grpo", "dr_grpo", "dapo"]

KL_ESTIMATORS: tuple[str, ...] = ("k1", "k2", "k3")
IMPORTANCE_LEVELS: tuple[str, ...] = ("token", "sequence")
LOSS_TYPES: tuple[str, ...] = ("grpo", "dr_grpo", "dapo")


def _zero_padding(x: Tensor, completion_mask: Tensor) -> Tensor:
    """[N, L] -> [N, L] with padding set to exactly 0 (gradient 0 there, even if x is NaN there)."""
    return torch.where(completion_mask, x, torch.zeros_like(x))


def kl_k1(per_token_logps: Tensor, ref_per_token_logps: Tensor) -> Tensor:
    """k1 = -log r = log pi - log pi_ref, with r = pi_ref / pi (Schulman, "Approximating KL divergence", 2020).

    Unbiased for KL(pi || pi_ref) under samples from pi, high variance, can be negative. [N, L] -> [N, L].
    """
    return per_token_logps - ref_per_token_logps


def kl_k2(per_token_logps: Tensor, ref_per_token_logps: Tensor) -> Tensor:
    """k2 = (log r)^2 / 2 (Schulman 2020): biased, low variance, >= 0; used by ESPO. [N, L] -> [N, L]."""
    return 0.5 * (ref_per_token_logps - per_token_logps) ** 2


def kl_k3(per_token_logps: Tensor, ref_per_token_logps: Tensor) -> Tensor:
    """k3 = (r - 1) - log r (Schulman 2020): unbiased, low variance, >= 0; GRPO's KL (arXiv 2402.03300, Eq. 4).

    [N, L] -> [N, L].
    """
    log_r = ref_per_token_logps - per_token_logps
    return torch.exp(log_r) - log_r - 1


KL_FNS = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def kl_estimate(per_token_logps: Tensor, ref_per_token_logps: Tensor, estimator: KLEstimator = "k3") -> Tensor:
    """Per-token KL(pi || pi_ref) estimate with the named estimator. [N, L] -> [N, L]. All are 0 where equal."""
    if estimator not in KL_FNS:
        raise ValueError(f"kl estimator={estimator!r}: choose one of {KL_ESTIMATORS}")
    return KL_FNS[estimator](per_token_logps, ref_per_token_logps)


def log_importance_weights(
    per_token_logps: Tensor, old_per_token_logps: Tensor, completion_mask: Tensor, level: ImportanceLevel = "token"
) -> Tensor:
    """Log importance ratio of the current policy to the one that sampled (the "old" one).

    per_token_logps, old_per_token_logps: [N, L]; completion_mask: [N, L] bool.
    ``level="token"``: ``new - old`` per token -> [N, L] (PPO/GRPO; 0 at padding).
    ``level="sequence"``: ``(ELBO_new - ELBO_old) / L_i`` -> [N, 1], L_i the number of completion tokens of
    row i (GSPO arXiv 2507.18071, Eq. 7; ESPO applies it to ELBOs). A row without tokens gets 0 (ratio 1).
    """
    if level not in IMPORTANCE_LEVELS:
        raise ValueError(f"importance_sampling_level={level!r}: choose one of {IMPORTANCE_LEVELS}")
    log_ratio = _zero_padding(per_token_logps - old_per_token_logps, completion_mask)  # [N, L]
    if level == "token":
        return log_ratio
    lengths = completion_mask.sum(dim=-1, keepdim=True).clamp(min=1)  # [N, 1]
    return log_ratio.sum(dim=-1, keepdim=True) / lengths  # [N, 1]


def clipped_surrogate(ratio: Tensor, advantages: Tensor, epsilon: float, epsilon_high: float | None = None) -> Tensor:
    """PPO clipped objective, negated: ``-min(r A, clip(r, 1 - eps, 1 + eps_high) A)`` (arXiv 1707.06347, Eq. 7).

    ratio: [N, L] or [N, 1]; advantages: [N, 1] (broadcast). ``epsilon_high`` > ``epsilon`` is DAPO's
    clip-higher (arXiv 2503.14476, Eq. 10); None means symmetric. Returns the per-token loss, ratio's shape.
    """
    epsilon_high = epsilon if epsilon_high is None else epsilon_high
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + epsilon_high)
    return -torch.min(ratio * advantages, clipped * advantages)


def aggregate_loss(
    per_token_loss: Tensor,
    completion_mask: Tensor,
    loss_type: LossType = "grpo",
    max_completion_length: int | None = None,
    num_items_in_batch: Tensor | float | None = None,
) -> Tensor:
    """Reduce a [N, L] per-token loss over real tokens to a scalar.

    - ``grpo``: mean over each row's tokens, then mean over rows (arXiv 2402.03300, Eq. 3). A row without
      tokens contributes 0 and still counts in the row mean (as in TRL).
    - ``dr_grpo``: sum over tokens / (N * max_completion_length) (arXiv 2503.20783, Sec. 3.2); a constant
      normaliser, so no length bias. ``max_completion_length`` is required and must be >= L.
    - ``dapo``: sum over tokens / number of tokens (arXiv 2503.14476, Eq. 12). Under gradient accumulation pass
      ``num_items_in_batch``: the completion-token count of *all* micro-batches whose gradients are summed into
      one optimiser step, so that the summed micro-batch losses equal the loss of the whole batch. Under data
      parallelism with gradient averaging over W ranks, pass the global count divided by W. None = this
      batch's own count. For ``grpo``/``dr_grpo`` the caller divides by the number of accumulation steps.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type={loss_type!r}: choose one of {LOSS_TYPES}")
    total = _zero_padding(per_token_loss, completion_mask)  # [N, L]
    if loss_type == "grpo":
        per_row = total.sum(dim=-1) / completion_mask.sum(dim=-1).clamp(min=1)  # [N]
        return per_row.mean()
    if loss_type == "dr_grpo":
        if max_completion_length is None or max_completion_length < per_token_loss.shape[-1]:
            raise ValueError(
                f"loss_type='dr_grpo' needs max_completion_length >= L={per_token_loss.shape[-1]}, "
                f"got {max_completion_length}: pass the generation budget (max new tokens)"
            )
        return total.sum() / (per_token_loss.shape[0] * max_completion_length)
    if num_items_in_batch is None:
        num_items_in_batch = completion_mask.sum()
    normaliser = torch.as_tensor(num_items_in_batch, dtype=total.dtype, device=total.device).clamp(min=1)
    return total.sum() / normaliser


def _masked_stats(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Mean, min, max of x over mask (same shape). NaN when mask is empty."""
    count = mask.sum()
    if count == 0:
        nan = torch.full((), float("nan"), dtype=x.dtype, device=x.device)
        return nan, nan, nan
    mean = torch.where(mask, x, torch.zeros_like(x)).sum() / count
    return mean, x[mask].min(), x[mask].max()


def policy_loss(
    per_token_logps: Tensor,
    old_per_token_logps: Tensor | None,
    advantages: Tensor,
    completion_mask: Tensor,
    *,
    ref_per_token_logps: Tensor | None = None,
    beta: float = 0.0,
    kl_estimator: KLEstimator = "k3",
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    importance_sampling_level: ImportanceLevel = "token",
    loss_type: LossType = "grpo",
    max_completion_length: int | None = None,
    num_items_in_batch: Tensor | float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped policy-gradient loss with an optional KL penalty to the reference (GRPO, arXiv 2402.03300, Eq. 3).

    per_token_logps: [N, L] current per-token ELBO terms (with grad). old_per_token_logps: [N, L], or None for
    on-policy (``per_token_logps.detach()``, ratio 1). advantages: [N]. completion_mask: [N, L] bool.
    ref_per_token_logps: [N, L], required when ``beta != 0``; when given with ``beta == 0`` the KL is only
    logged. The KL is per token and added to the per-token loss before aggregation.

    ``importance_sampling_level="sequence"`` uses one ratio per row, ``exp((ELBO_new - ELBO_old) / L_i)``,
    broadcast to the row's tokens; with ``loss_type="grpo"`` this is the per-sequence objective of GSPO/ESPO
    (each row's token mean of a constant is that constant). With ``dapo``/``dr_grpo`` longer rows weigh more.

    Returns (loss 0-d, metrics of detached 0-d tensors): ``policy/clipfrac_low`` (ratio < 1 - eps with A < 0),
    ``policy/clipfrac_high`` (ratio > 1 + eps_high with A > 0), ``policy/clipfrac`` (either: the gradient is
    clipped), ``policy/ratio_mean|min|max``, ``policy/kl`` (if a reference is given), ``policy/loss``. These
    are means over real tokens (token level) or over rows with tokens (sequence level), as in TRL.
    """
    if advantages.dim() != 1 or advantages.shape[0] != per_token_logps.shape[0]:
        raise ValueError(f"advantages must be [N]={per_token_logps.shape[0]}, got shape {tuple(advantages.shape)}")
    if completion_mask.dtype != torch.bool:
        raise ValueError(f"completion_mask must be bool, got {completion_mask.dtype}")
    if beta != 0.0 and ref_per_token_logps is None:
        raise ValueError(f"beta={beta} needs ref_per_token_logps; pass them or set beta=0")
    if old_per_token_logps is None:
        old_per_token_logps = per_token_logps.detach()

    log_w = log_importance_weights(per_token_logps, old_per_token_logps, completion_mask, importance_sampling_level)
    ratio = torch.exp(log_w)  # [N, L] or [N, 1]
    adv = advantages.unsqueeze(1).to(ratio.dtype)  # [N, 1]
    per_token_loss = clipped_surrogate(ratio, adv, epsilon, epsilon_high).expand_as(per_token_logps)  # [N, L]

    per_token_kl = None
    if ref_per_token_logps is not None:
        new = _zero_padding(per_token_logps, completion_mask)
        ref = _zero_padding(ref_per_token_logps, completion_mask)
        per_token_kl = kl_estimate(new, ref, kl_estimator)  # [N, L]
        if beta != 0.0:
            per_token_loss = per_token_loss + beta * per_token_kl

    loss = aggregate_loss(per_token_loss, completion_mask, loss_type, max_completion_length, num_items_in_batch)

    with torch.no_grad():
        eps_high = epsilon if epsilon_high is None else epsilon_high
        # Token level: statistics over real tokens; sequence level: over rows that have tokens.
        stat_mask = completion_mask if importance_sampling_level == "token" else completion_mask.any(-1, keepdim=True)
        low = (ratio < 1 - epsilon) & (adv < 0)
        high = (ratio > 1 + eps_high) & (adv > 0)
        metrics = {
            "policy/clipfrac_low": _masked_stats(low.to(ratio.dtype), stat_mask)[0],
            "policy/clipfrac_high": _masked_stats(high.to(ratio.dtype), stat_mask)[0],
            "policy/clipfrac": _masked_stats((low | high).to(ratio.dtype), stat_mask)[0],
        }
        ratio_stats = _masked_stats(ratio.detach(), stat_mask)
        metrics.update(zip(("policy/ratio_mean", "policy/ratio_min", "policy/ratio_max"), ratio_stats, strict=True))
        if per_token_kl is not None:
            metrics["policy/kl"] = _masked_stats(per_token_kl.detach(), completion_mask)[0]
        metrics["policy/loss"] = loss.detach()
    return loss, metrics


def all_finite(tensors: Iterable[Tensor | None]) -> bool:
    """True iff every element of every tensor is finite (None entries, e.g. absent grads, are skipped).

    Use on the loss before backward and on ``(p.grad for p in params)`` after it; the trainer skips the
    update when False. One host sync in total. Under data parallelism, reduce the flag across ranks (e.g. a MIN
    all_reduce) so every rank skips the same step.
    """
    flags = [torch.isfinite(t).all() for t in tensors if t is not None]
    if not flags:
        return True
    device = flags[0].device
    return bool(torch.stack([f.to(device) for f in flags]).all().item())
