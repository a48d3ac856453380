"""The forward (masking) process: noise schedules and mask draws, all randomness from an explicit Generator.

A `MaskDraw` is drawn **once per step** and reused for the old, current and reference policies, so their
likelihood estimates differ only through the weights (DiffuCoder, GDPO, LLaDA 1.5 and ESPO all share masks
this way). It holds, for S forward passes, which completion tokens are replaced by the mask token and the
coefficient of each masked token's log-probability in the estimate; `rlwork.diffusion.elbo` only reads it.

Blocks. For a block-causal model (block size B) blocks are aligned to the sequence start: completion token j
of a row whose prompt has p real tokens sits at position p + j, in block (p + j) // B. Completion blocks are
numbered locally, c = (p % B + j) // B, so when p % B != 0 block c = 0 holds only the B - p % B completion
tokens that finish the prompt's last partial block. Every schedule acts **per block**: each block draws its
own t (as block diffusion training does, BD3-LM arXiv 2503.09573 Sec. 3), because the block-causal
likelihood factorises over blocks, log p(x) = sum_c log p(x_c | prompt, x_<c), and each factor has its own
ELBO. A bidirectional model is one block per row (block_size None).

Scorable tokens are `completion_mask` (real completion tokens, EOS included); positions after EOS are never
masked and never scored.

Shape letters: S samples (= forward passes), N rows, P prompt length, L completion length, C blocks per row.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

ESTIMATORS = ("mc", "coupled", "stratified", "one_step")
SCHEDULES = ("clipped", "linear")


# ---------------------------------------------------------------------------------------------------------------
# Schedules (pure functions)


def linear_mask_rate(t: Tensor, eps: float) -> Tensor:
    """LLaDA's forward process (arXiv 2502.09992, Alg. 1): mask rate (1 - eps) t + eps for t ~ U(0, 1).

    The rate is then U(eps, 1); eps keeps the 1/rate weight finite. t: any shape; returns the same shape.
    """
    return (1 - eps) * t + eps


def clipped_mask_rate(t: Tensor, block_size: int) -> Tensor:
    """Stable-DiffCoder's schedule (arXiv 2601.15892): u(t) = 1 - t, clipped per block to min(1, max(u, 1/B)).

    With t ~ U(0, 1) the rate is 1/B with probability 1/B and U(1/B, 1) otherwise; the loss weight 1/rate is at
    most B. t: any shape; returns the same shape.
    """
    return (1 - t).clamp(min=1.0 / block_size, max=1.0)


def block_offsets(prompt_mask: Tensor, block_size: int) -> Tensor:
    """prompt_mask: [N, P] bool. Returns [N] int64: how far into its block the completion starts (p % B)."""
    return prompt_mask.long().sum(-1) % block_size


def completion_block_ids(block_offset: Tensor | None, length: int, block_size: int | None) -> Tensor:
    """Local block index of each completion token: (offset + j) // B; all zeros for a bidirectional model.

    block_offset: [N] int64 or None (bidirectional). Returns [N, L] int64 ([1, L] when block_offset is None).
    """
    j = torch.arange(length, device=None if block_offset is None else block_offset.device)
    if block_size is None or block_offset is None:
        return torch.zeros(1, length, dtype=torch.long, device=j.device)
    return (block_offset[:, None] + j[None]) // block_size


def apply_masks(ids: Tensor, masks: Tensor, mask_id: int) -> Tensor:
    """Replace masked tokens by the mask token. ids: [..., T] int64, masks: same shape bool."""
    return ids.masked_fill(masks, mask_id)


# ---------------------------------------------------------------------------------------------------------------
# The draw


@dataclass(frozen=True)
class MaskDraw:
    """One step's mask draws, shared by every policy scored in that step.

    An estimate is sum_s sum_l weights[s, n, l] * log p_theta(x_l | noisy sequence s), so `weights` already holds
    the 1/ratio importance weight and the 1/S average; it is 0 wherever `masks` is False.

    Attributes:
        estimator: the estimator that drew it (one of ESTIMATORS, or "custom" for hand-built draws).
        masks: [S, N, L] bool; completion tokens replaced by the mask token in forward pass s.
        weights: [S, N, L] float32; coefficient of each masked token's log-probability.
        ratios: [S, N, L] float32; the masking rate (or count / (n + 1)) of the token's block in pass s.
        prompt_masks: [S, N, P] bool, prompt tokens masked in pass s (d1's prompt masking), or None.
        block_size: B for block-causal models, None for bidirectional ones.
        block_offset: [N] int64, p % B per row (see the module docstring), or None for bidirectional models.
    """

    estimator: str
    masks: Tensor
    weights: Tensor
    ratios: Tensor
    prompt_masks: Tensor | None
    block_size: int | None
    block_offset: Tensor | None

    def __post_init__(self):
        if self.masks.dim() != 3 or self.weights.shape != self.masks.shape or self.ratios.shape != self.masks.shape:
            raise ValueError(
                f"MaskDraw: masks, weights and ratios must share one [S, N, L] shape, got "
                f"{tuple(self.masks.shape)}, {tuple(self.weights.shape)}, {tuple(self.ratios.shape)}"
            )
        if self.prompt_masks is not None and self.prompt_masks.shape[:2] != self.masks.shape[:2]:
            raise ValueError("MaskDraw: prompt_masks must be [S, N, P] with the S and N of masks")
        if (self.block_size is None) != (self.block_offset is None):
            raise ValueError("MaskDraw: block_size and block_offset are given together (block-causal) or not at all")

    @property
    def num_samples(self) -> int:
        return self.masks.shape[0]

    @property
    def num_forwards(self) -> int:
        """Model passes over the full batch that scoring this draw costs: one per sample.

        Bidirectional: a pass over [prompt, noisy completion]; block-causal: a pass over the doubled sequence
        [prompt, clean completion, noisy completion] (about (P + 2L) / (P + L) times the tokens). Compare
        estimators at equal `num_forwards` (e.g. mc with 4 samples vs coupled or stratified with 2 pairs).
        """
        return self.num_samples


def select_rows(draw: MaskDraw, rows: slice | Tensor) -> MaskDraw:
    """The draw restricted to some rows (a slice or [M] int64 indices): micro-batches keep the shared draws."""
    return dataclasses.replace(
        draw, masks=draw.masks[:, rows], weights=draw.weights[:, rows], ratios=draw.ratios[:, rows],
        prompt_masks=None if draw.prompt_masks is None else draw.prompt_masks[:, rows],
        block_offset=None if draw.block_offset is None else draw.block_offset[rows],
    )


def draw_masks(
    estimator: str,
    completion_mask: Tensor,
    num_samples: int,
    block_size: int | None,
    generator: torch.Generator | int,
    *,
    prompt_mask: Tensor | None = None,
    schedule: str | None = None,
    eps: float = 1e-3,
    t_range: tuple[float, float] = (0.2, 0.8),
    force_mask: bool = False,
    prompt_mask_prob: float = 0.0,
) -> MaskDraw:
    """Draw the masks and weights of one step for `estimator`.

    completion_mask: [N, L] bool. block_size: the model's block size (block-causal) or None (bidirectional);
    block-causal draws need `prompt_mask` ([N, P] bool) to place the block boundaries. generator: a
    torch.Generator or an int seed; the draw is a function of it alone. Estimators (per block, see module doc):

    - "mc": S independent samples (LLaDA, arXiv 2502.09992 Eq. 3). schedule "clipped" (default for block-causal):
      Stable-DiffCoder's per-block rate min(1, max(1 - t, 1/B)), t ~ U(0, 1), weight 1/rate; its expectation is
      the ELBO with the t < 1/B part of the integral replaced by its endpoint (a small bias). With `force_mask`
      one uniformly chosen token is masked in a block where none was (the paper's training fallback, weight
      still 1/rate): it adds weight-B terms and biases the estimate down (on the tiny coder, -54.8 vs an exact
      ELBO of -47.4 over 7 tokens), so it is off by default. schedule "linear" (default for bidirectional):
      rate (1 - eps) t + eps, weight 1/rate.
    - "coupled": S/2 complementary pairs (DiffuCoder coupled-GRPO, arXiv 2506.20639 Sec. 4): t ~ U(t_range);
      pass one masks token k iff r_k < t (weight 1/t), pass two masks the rest (weight 1/(1 - t)); every
      completion token is scored exactly once per pair; the pair is averaged. Unbiased for the ELBO only as
      t_range -> (0, 1), where the 1/t weights make the variance diverge logarithmically; the default is
      DiffuCoder's (0.2, 0.8), which restricts the ELBO's time integral to that range (a small bias).
      DiffuCoder also averages in a fully masked pass; that is `one_step`, left to the caller to combine.
    - "stratified": S/2 pairs with exact mask counts (ESPO, arXiv 2512.03759; GDPO): per block with n scorable
      tokens, k ~ U{0..n}, pair i masks x_i = (k + floor(i (n + 1) / (S/2))) mod (n + 1) random tokens, weight
      (n + 1) / x_i, and its complement, weight (n + 1) / (n - x_i). Each x_i is U{0..n}, so each pass is an
      unbiased estimate of the ELBO (sum_k 1/k E_{|M|=k} ...), and the counts cover 0..n evenly across pairs.
    - "one_step": d1's estimate (arXiv 2504.12216): every completion token masked, weight 1 (per block for a
      block-causal model: each block fully masked given clean earlier blocks). It is **biased**: it scores
      log p(x_k | nothing of the completion), not the ELBO of log p(x).

    prompt_mask_prob: d1 masks each real prompt token with this probability in every pass (0 = off).
    Returns a MaskDraw on completion_mask's device.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator '{estimator}': choose one of {', '.join(ESTIMATORS)}")
    if num_samples < 1 or (estimator in ("coupled", "stratified") and num_samples % 2):
        raise ValueError(f"num_samples={num_samples}: '{estimator}' needs a positive (and for pairs, even) count")
    schedule = schedule or ("clipped" if block_size is not None else "linear")
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule '{schedule}': choose one of {', '.join(SCHEDULES)}")
    if schedule == "clipped" and block_size is None:
        raise ValueError("schedule='clipped' clips at 1/block_size: use schedule='linear' for bidirectional models")
    if block_size is not None and prompt_mask is None:
        raise ValueError("block-causal draws need prompt_mask to align blocks to the sequence start")
    if prompt_mask_prob > 0 and prompt_mask is None:
        raise ValueError(f"prompt_mask_prob={prompt_mask_prob} needs prompt_mask")
    if not 0.0 <= t_range[0] < t_range[1] <= 1.0:
        raise ValueError(f"t_range={t_range}: need 0 <= low < high <= 1")
    gen = generator if isinstance(generator, torch.Generator) else torch.Generator().manual_seed(int(generator))
    dev = gen.device
    scorable = completion_mask.to(dev, torch.bool)
    offset = None if block_size is None else block_offsets(prompt_mask.to(dev), block_size)
    blk = completion_block_ids(offset, scorable.shape[1], block_size).expand_as(scorable)  # [N, L]
    num_blocks = int(blk.max()) + 1 if blk.numel() else 1
    counts = torch.zeros(scorable.shape[0], num_blocks, dtype=torch.long, device=dev)
    counts.scatter_add_(1, blk, scorable.long())  # [N, C]
    draw = {"mc": _draw_mc, "coupled": _draw_coupled, "stratified": _draw_stratified, "one_step": _draw_one_step}
    kwargs = dict(scorable=scorable, blk=blk, counts=counts, num_samples=num_samples, gen=gen)
    if estimator == "mc":
        kwargs.update(schedule=schedule, block_size=block_size, eps=eps, force_mask=force_mask)
    elif estimator == "coupled":
        kwargs.update(t_range=t_range)
    masks, ratios = draw[estimator](**kwargs)
    weights = torch.where(masks, 1.0 / ratios.clamp_min(1e-12), torch.zeros_like(ratios)) / num_samples
    prompt_masks = None
    if prompt_mask_prob > 0:
        noise = torch.rand((num_samples, *prompt_mask.shape), generator=gen, device=dev)
        prompt_masks = prompt_mask.to(dev, torch.bool)[None] & (noise < prompt_mask_prob)
    out = completion_mask.device
    return MaskDraw(
        estimator=estimator,
        masks=masks.to(out),
        weights=weights.float().to(out),
        ratios=ratios.float().to(out),
        prompt_masks=None if prompt_masks is None else prompt_masks.to(out),
        block_size=block_size,
        block_offset=None if offset is None else offset.to(out),
    )


def draw_group_masks(
    estimator: str,
    completion_mask: Tensor,
    group_ids: Tensor,
    num_samples: int,
    block_size: int | None,
    generator_of: Callable[[int], torch.Generator],
    *,
    prompt_mask: Tensor | None = None,
    prompt_mask_prob: float = 0.0,
) -> MaskDraw:
    """`draw_masks` with one noise per group: the rows of a group (completions of one prompt) mask the same
    positions with the same rates, each restricted to its own tokens (common random numbers).

    A group advantage-weighted gradient sums +/- the rows' estimates; where two completions agree, their terms then
    cancel up to the context they differ in, instead of adding two independent draws' noise. Each row's draw is
    still distributed as `draw_masks`'s (a token's mask depends only on its own key and its block's rate), so every
    row's estimate keeps its expectation. "stratified" draws exact per-row counts, which rows of different lengths
    cannot share: refused.

    completion_mask: [N, L] bool. group_ids: [N] int64; rows of a group share their prompt (prompt_mask rows equal).
    generator_of(g): the generator of group g (a function of g alone, so any split of the rows draws the same).
    """
    if estimator == "stratified":
        raise ValueError("stratified draws exact mask counts per row, which rows of different lengths cannot share: "
                         "use the coupled or mc estimator with shared group masks")
    scorable = completion_mask.to(torch.bool)
    draws, rows = [], []
    for g in torch.unique(group_ids).tolist():
        members = (group_ids == g).nonzero().flatten()
        first = members[:1]
        if prompt_mask is not None and not bool((prompt_mask[members] == prompt_mask[first]).all()):
            raise ValueError(f"group {g}: its rows have different prompts, so they cannot share mask positions")
        union = scorable[members].any(0, keepdim=True)  # [1, L]
        one = draw_masks(estimator, union, num_samples, block_size, generator_of(g),
                         prompt_mask=None if prompt_mask is None else prompt_mask[first],
                         prompt_mask_prob=prompt_mask_prob)
        draws.append(select_rows(one, torch.zeros(len(members), dtype=torch.long, device=one.masks.device)))
        rows.append(members)
    order = torch.argsort(torch.cat(rows))
    cat = lambda name: torch.cat([getattr(d, name) for d in draws], 1)[:, order]
    masks = cat("masks") & scorable[None].to(draws[0].masks.device)
    prompt_masks = None if draws[0].prompt_masks is None else cat("prompt_masks")
    offsets = None if block_size is None else torch.cat([d.block_offset for d in draws])[order]
    return MaskDraw(estimator=estimator, masks=masks, weights=cat("weights") * masks, ratios=cat("ratios"),
                    prompt_masks=prompt_masks, block_size=block_size, block_offset=offsets)


# ---------------------------------------------------------------------------------------------------------------
# One function per estimator: (masks [S, N, L] bool, ratios [S, N, L] float64)


def _to_tokens(per_block: Tensor, blk: Tensor) -> Tensor:
    """per_block: [S, N, C]; blk: [N, L]. Returns [S, N, L]: each token gets its block's value."""
    return per_block.gather(2, blk[None].expand(per_block.shape[0], -1, -1))


def _keys(shape: tuple[int, ...], gen: torch.Generator) -> Tensor:
    # float64 keys: ties (which would break "exactly k masked" and the uniform forced pick) have no practical odds
    return torch.rand(shape, generator=gen, device=gen.device, dtype=torch.float64)


def _draw_mc(*, scorable, blk, counts, num_samples, gen, schedule, block_size, eps, force_mask):
    s, (n, length) = num_samples, scorable.shape
    t = _keys((s, n, counts.shape[1]), gen)
    rate = clipped_mask_rate(t, block_size) if schedule == "clipped" else linear_mask_rate(t, eps)
    rate = _to_tokens(rate, blk)  # [S, N, L]
    keys = _keys((s, n, length), gen)
    masks = scorable & (keys < rate)
    if schedule == "clipped" and force_mask:
        masks = masks | _forced(masks, keys, scorable, blk, counts.shape[1])
    return masks, rate


def _forced(masks: Tensor, keys: Tensor, scorable: Tensor, blk: Tensor, num_blocks: int) -> Tensor:
    """The token with the smallest key in each block that has scorable tokens but no masked one: [S, N, L]."""
    s = masks.shape[0]
    index = blk[None].expand(s, -1, -1)
    hit = torch.zeros(s, blk.shape[0], num_blocks, dtype=torch.long, device=masks.device)
    hit.scatter_add_(2, index, masks.long())  # [S, N, C]
    lowest = torch.full(hit.shape, 2.0, dtype=keys.dtype, device=keys.device)
    lowest.scatter_reduce_(2, index, keys.masked_fill(~scorable, 2.0), reduce="amin")  # [S, N, C]
    empty = _to_tokens(hit, blk) == 0
    return scorable & empty & (keys == _to_tokens(lowest, blk))


def _draw_coupled(*, scorable, blk, counts, num_samples, gen, t_range):
    h, (n, length) = num_samples // 2, scorable.shape
    low, high = t_range
    t = _to_tokens(low + (high - low) * _keys((h, n, counts.shape[1]), gen), blk)  # [S/2, N, L]
    first = scorable & (_keys((h, n, length), gen) < t)
    return _interleave(first, scorable & ~first), _interleave(t, 1 - t)


def _draw_stratified(*, scorable, blk, counts, num_samples, gen):
    h, (n, length) = num_samples // 2, scorable.shape
    levels = (counts + 1).double()  # [N, C]: n + 1 possible counts per block
    start = torch.floor(_keys(tuple(counts.shape), gen) * levels)  # k ~ U{0..n}
    shift = torch.floor(torch.arange(h, device=gen.device, dtype=torch.float64)[:, None, None] * levels / h)
    x = torch.remainder(start + shift, levels)  # [S/2, N, C], each U{0..n}
    rank = _ranks_within_block(_keys((h, n, length), gen), scorable, blk)
    x_tok, levels_tok = _to_tokens(x, blk), _to_tokens(levels[None].expand(h, -1, -1), blk)
    first = scorable & (rank < x_tok)
    ratios = _interleave(x_tok / levels_tok, (levels_tok - 1 - x_tok) / levels_tok)  # x/(n+1), (n-x)/(n+1)
    return _interleave(first, scorable & ~first), ratios


def _draw_one_step(*, scorable, blk, counts, num_samples, gen):
    masks = scorable[None].expand(num_samples, -1, -1).clone()
    return masks, torch.ones(masks.shape, dtype=torch.float64, device=masks.device)


def _interleave(first: Tensor, second: Tensor) -> Tensor:
    """[S/2, ...] x2 -> [S, ...] ordered (first_0, second_0, first_1, ...), so pairs stay adjacent."""
    return torch.stack([first, second], 1).flatten(0, 1)


def _ranks_within_block(keys: Tensor, scorable: Tensor, blk: Tensor) -> Tensor:
    """Rank (0-based) of each scorable token's key among the scorable tokens of its block: a uniform random order.

    keys: [S, N, L] in [0, 1); scorable, blk: [N, L]. Non-scorable tokens get ranks >= the block's count.
    """
    # sort by (block, scorable first, key): a block's tokens are contiguous in sorted order
    sort_key = blk[None].double() * 4 + torch.where(scorable[None], keys, 2.0 + keys)
    order = sort_key.argsort(-1)
    position = torch.empty_like(order)
    position.scatter_(-1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order))
    block_len = torch.zeros(blk.shape[0], int(blk.max()) + 2, dtype=torch.long, device=blk.device)
    block_len.scatter_add_(1, blk + 1, torch.ones_like(blk))
    block_start = block_len.cumsum(1).gather(1, blk)  # [N, L]: first sorted position of the token's block
    return position - block_start[None]
