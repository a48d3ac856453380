"""The exact log-likelihood of a sampled trajectory ("trace") under a diffusion LM, per committed token.

The sampler (`rlwork.diffusion.sampler.generate`) builds a completion step by step: at each denoising step it runs
the model on its canvas (prompt, the tokens committed so far, mask tokens elsewhere) and commits some masked
positions, each to a token drawn from `sampling_logits` of that step (mask token removed, logits / temperature,
top-k / top-p). It records, per committed token, the row-wise step that committed it (`trace_step`) and the tokens
committed after the first EOS inside the block that ended the row (`trace_ids`), since later steps of that block
saw them. For every real completion token this module recomputes

    log pi_theta(x_j | canvas before step s_j),    s_j = trace_step[j],

the canvas before step s being: every token committed at a step < s revealed, every other completion position the
mask token. Blocks are decoded in order, so for a block-causal model the canvas of block c's steps is the prompt,
the clean blocks < c and the tokens of block c committed earlier: TraceRL's estimator (arXiv 2509.06949, Sec. 3;
Gen-Verse/dLLM-RL), whose sum over a row is log of the probability that the sampler draws these tokens at these
positions.

What is exact. With the same weights, `per_token` equals the sampler's recorded `sampling_per_token_logps` up to
float noise (different forward shapes; 1e-4 is tested): the same canvas, the same attention (block-causal: what the
exact KV cache holds; the prompt's last partial block attends to the block that completes it), the same
distribution (mask token removed, temperature, the top-k/top-p choice of tokens recomputed in float64 as the sampler
makes it). So the first update's importance ratio is 1 without an extra forward, and the ratio after an update is
that of the new policy to the one that sampled, on the states the sampler actually visited: no mask the sampler
never produced, no bound.

What the ratio and the KL mean per committed token. Tokens committed in one step are drawn independently given the
canvas, so the trajectory's token probability is the product of the per-token terms. The token ratio
exp(per_token_new - per_token_old) is the ratio of one position's two distributions at the state the sampler was in,
and PPO's clip acts on that decision; the per-token KL estimate (k1/k2/k3 against the reference's term on the same
state) estimates the KL between the two per-position distributions at the sampled token, and its sum over a row the
KL between the two policies' trajectory distributions, the unmasking positions held fixed.

What is assumed. Which positions a step commits (the remasking choice: low_confidence, margin, entropy, random,
threshold) is taken as given, as the published method does: its probability is left out of the likelihood, so the
gradient does not teach the model which tokens to commit first. Temperature 0 draws from no distribution; the
sampler then records, and this module scores, the model's own log-probability at temperature 1 (unfiltered): a ratio
that the policy can move, not a behaviour probability. Exactness also needs the sampler's exact conditioning:
block-causal models (either cache setting) and bidirectional ones with `use_cache=False`; Fast-dLLM's prefix cache
(bidirectional, `use_cache=True`) samples from stale keys, which no fresh forward reproduces. Dropout: with LoRA
dropout > 0 a train-mode forward is another (random) function of the weights, so the sampler and the scoring must both
run in eval mode; the RL trainer refuses likelihood=trace with lora.dropout > 0 instead. In bf16 the sampler and this
module see logits from forwards of different shapes, so they agree to bf16 precision (4e-3 measured on the tiny
coder), not 1e-4; the rollout's record is then the behaviour policy and the ratio carries that mismatch. With
top-k/top-p, a token that sits on the filter's edge can fall on the other side from this forward's float noise, and
then scores -inf (rare; the ratio is then 0, which the clip handles).

Two implementations. `trace_logps_loop`: one ordinary forward per denoising step, all rows at that step together
(any family; the reference). `trace_logps_one_forward` (block-causal, unshifted): one forward over
[prompt, clean completion, then per step index r: prompt-tail copy, the canvas of copy r], where copy r holds, in
every block, the tokens committed before that block's r-th step; block c of copy r sees the prompt and the clean
blocks < c and only its own copy's block (`elbo.block_copies_inputs`, the one-forward block ELBO's trick with R
copies). Length P + L + R(L + B - 1), R = most steps any block took (at most steps_per_block).

Shape letters: N rows, P prompt length, L completion length, V vocabulary, R step copies, M scored tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rlwork.diffusion.elbo import block_copies_inputs
from rlwork.diffusion.masking import block_offsets, completion_block_ids
from rlwork.diffusion.sampler import sampling_logits
from rlwork.models.lm import DiffusionLM


@dataclass(frozen=True)
class TraceOutput:
    """Trajectory log-likelihoods of one batch.

    Attributes:
        per_token: [N, L] float32; log-prob of each real completion token at the step that committed it; 0 elsewhere.
        sequence: [N] float32; their sum: the log-probability of the trajectory's tokens, positions given.
        model_calls: model forward calls made.
        entropy: 0-d float32, detached; the mean entropy (nats) of the sampler's distribution at each scored
            token's decision (the state that committed it; mask token removed, temperature, top-k/top-p, as the
            likelihood scores it); NaN when nothing was scored. The trace's counterpart of the ELBO's `entropy`.
    """

    per_token: Tensor
    sequence: Tensor
    model_calls: int
    entropy: Tensor


def _scaled(logits: Tensor, mask_id: int, temperature: float, top_k: int | None, top_p: float | None) -> Tensor:
    """The sampler's distribution as float32 logits: [M, V] -> [M, V], -inf where the sampler cannot draw (the mask
    token, tokens the top-k/top-p filters remove, decided in float64 on detached logits as the sampler decides)."""
    filtered = temperature > 0 and (top_k is not None or (top_p is not None and top_p < 1))
    if filtered:
        drop = ~torch.isfinite(sampling_logits(logits.detach().double(), mask_id, temperature, top_k, top_p))
    else:
        drop = (torch.arange(logits.shape[-1], device=logits.device) == mask_id).expand_as(logits)
    return (logits.float() / (temperature if temperature > 0 else 1.0)).masked_fill(drop, float("-inf"))


def token_logps(
    logits: Tensor, targets: Tensor, mask_id: int, temperature: float, top_k: int | None, top_p: float | None
) -> Tensor:
    """log p(target) under the sampler's distribution (`sampler.sampling_logits`) of the given logits.

    logits: [M, V] (any float dtype; differentiable); targets: [M] int64. Returns [M] float32. Which tokens the
    top-k/top-p filters keep is decided in float64 on detached logits, as the sampler decides it; the log-softmax
    runs in float32. A target the filters remove gets -inf.
    """
    return token_logps_and_entropy(logits, targets, mask_id, temperature, top_k, top_p)[0]


def token_logps_and_entropy(
    logits: Tensor, targets: Tensor, mask_id: int, temperature: float, top_k: int | None, top_p: float | None
) -> tuple[Tensor, Tensor]:
    """`token_logps`, and the sum over rows of the entropy (nats) of the same distribution (0-d float32, detached),
    from one filtering of the logits. logits: [M, V]; targets: [M]."""
    scaled = _scaled(logits, mask_id, temperature, top_k, top_p)  # [M, V]
    with torch.no_grad():
        every = scaled.log_softmax(-1)
        entropy = -torch.where(torch.isfinite(every), every.exp() * every, 0.0).sum()
    return scaled.gather(-1, targets[:, None]).squeeze(-1) - scaled.logsumexp(-1), entropy


def _mean(total: Tensor, count: int) -> Tensor:
    return total / count if count else torch.tensor(float("nan"), device=total.device)


def local_steps(trace_step: Tensor, block_offset: Tensor, block_size: int) -> Tensor:
    """Each committed token's step counted from its block's first step; -1 where nothing was committed.

    trace_step: [N, L] int64 (-1 = not committed); block_offset: [N] int64 (p % B). Returns [N, L] int64.
    Raises ValueError if blocks were not decoded one after the other (a step of block c before one of block c - 1).
    """
    committed = trace_step >= 0
    blk = completion_block_ids(block_offset, trace_step.shape[1], block_size)  # [N, L]
    blocks = int(blk.max()) + 1
    big = torch.iinfo(torch.long).max
    first = torch.full((trace_step.shape[0], blocks), big, device=trace_step.device)
    first = first.scatter_reduce(1, blk, torch.where(committed, trace_step, big), "amin")  # [N, C]
    last = torch.full_like(first, -1).scatter_reduce(1, blk, trace_step, "amax")  # [N, C]
    ran = last >= 0
    last_before = torch.cummax(torch.cat([torch.full_like(last[:, :1], -1), last[:, :-1]], 1), 1).values  # [N, C]
    if bool((ran & (first <= last_before)).any()):
        raise ValueError("trace_step is not a block-by-block decode order (a block has a step before an earlier "
                         "block's last): pass the sampler's trace_step for these prompts")
    return torch.where(committed, trace_step - first.gather(1, blk), -1)


def _check(lm: DiffusionLM, prompt_mask: Tensor, trace_ids: Tensor, trace_step: Tensor,
           completion_mask: Tensor) -> None:
    same = trace_ids.shape == trace_step.shape == completion_mask.shape
    if not same or trace_ids.shape[0] != prompt_mask.shape[0]:
        raise ValueError(f"trace_ids {tuple(trace_ids.shape)}, trace_step {tuple(trace_step.shape)} and "
                         f"completion_mask {tuple(completion_mask.shape)} must share one [N, L] shape, N = "
                         f"{prompt_mask.shape[0]} prompts")
    if bool((completion_mask.bool() & (trace_step < 0)).any()):
        raise ValueError("a real completion token has no trace_step: pass the sampler's trace_step (not decode_step "
                         "of another rollout), or leave the token out of completion_mask")
    if bool(((trace_step >= 0) & (trace_ids == lm.mask_id)).any()):
        raise ValueError("trace_ids holds the mask token at a committed position: pass the sampler's trace_ids")


def trace_logps_loop(
    lm: DiffusionLM, prompt_ids: Tensor, prompt_mask: Tensor, trace_ids: Tensor, trace_step: Tensor,
    completion_mask: Tensor, *, temperature: float, top_k: int | None = None, top_p: float | None = None,
    model: torch.nn.Module | None = None,
) -> TraceOutput:
    """Reference: for each step s, one ordinary forward (the family's attention) of [prompt, canvas before s] for the
    rows that committed a real token at step s, scoring those tokens. Any family.

    prompt_ids, prompt_mask: [N, P] left-padded; trace_ids, trace_step: [N, L] (the sampler's); completion_mask:
    [N, L] bool, the tokens to score. temperature, top_k, top_p: the sampler's. Differentiable w.r.t. the model
    (one graph per step: memory grows with the number of steps). Costs one call of length P + L per step that
    commits a real token in some row (max(trace_step) + 1 at most).
    """
    _check(lm, prompt_mask, trace_ids, trace_step, completion_mask)
    per_token = torch.zeros(trace_ids.shape, dtype=torch.float32, device=trace_ids.device)
    completion_keys = torch.ones_like(completion_mask, dtype=torch.bool)  # the sampler's canvas spans all L columns
    calls, entropy, scored_tokens = 0, torch.zeros((), device=trace_ids.device), 0
    for step in range(int(trace_step.max()) + 1 if trace_step.numel() else 0):
        rows = ((trace_step == step) & completion_mask.bool()).any(1).nonzero().squeeze(1)  # [n]
        if rows.numel() == 0:
            continue  # no row commits a real token at this step
        before = (trace_step[rows] >= 0) & (trace_step[rows] < step)
        canvas = torch.where(before, trace_ids[rows], lm.mask_id)  # [n, L]
        logits, _ = lm.forward(torch.cat([prompt_ids[rows], canvas], 1),
                               torch.cat([prompt_mask[rows], completion_keys[rows]], 1).bool(), model=model,
                               logits_to_keep=trace_ids.shape[1])
        calls += 1
        scored = (trace_step[rows] == step) & completion_mask[rows].bool()  # [n, L]
        index = scored.nonzero(as_tuple=True)
        logp, step_entropy = token_logps_and_entropy(logits[index], trace_ids[rows][index], lm.mask_id, temperature,
                                                     top_k, top_p)  # [M], 0-d
        per_token = per_token.index_put((rows[index[0]], index[1]), logp)
        entropy = entropy + step_entropy
        scored_tokens += logp.numel()
    return TraceOutput(per_token, per_token.sum(-1), calls, _mean(entropy, scored_tokens))


def trace_logps_one_forward(
    lm: DiffusionLM, prompt_ids: Tensor, prompt_mask: Tensor, trace_ids: Tensor, trace_step: Tensor,
    completion_mask: Tensor, *, temperature: float, top_k: int | None = None, top_p: float | None = None,
    model: torch.nn.Module | None = None,
) -> TraceOutput:
    """All steps of all blocks in one forward (block-causal, unshifted families; see the module docstring).

    Same arguments and result as `trace_logps_loop`; one model call of length P + L + R(L + B - 1).
    """
    _check(lm, prompt_mask, trace_ids, trace_step, completion_mask)
    if not lm.block_causal or lm.family.shift_logits:
        raise ValueError(f"the one-forward trace needs a block-causal, unshifted family, not '{lm.family.name}': "
                         "use trace_logps_loop (or trace_logps, which picks)")
    block, length = int(lm.block_size), trace_ids.shape[1]  # type: ignore[arg-type]
    committed = trace_step >= 0
    local = local_steps(trace_step, block_offsets(prompt_mask, block), block)  # [N, L]
    scored = completion_mask.bool() & committed
    copies = int(local[scored].max()) + 1 if bool(scored.any()) else 1  # later copies would score nothing
    canvases = torch.stack([torch.where(committed & (local < r), trace_ids, lm.mask_id) for r in range(copies)])
    ids, allowed, pos = block_copies_inputs(prompt_ids, prompt_mask, trace_ids, committed, canvases, committed, block)
    width = length + block - 1
    logits, _ = lm.forward(ids, allowed=allowed, position_ids=pos, model=model, logits_to_keep=copies * width)
    logits = logits.unflatten(1, (copies, width))[:, :, block - 1:]  # [N, R, L, V]
    index = scored.nonzero(as_tuple=True)
    picked = logits[index[0], local[index], index[1]]  # [M, V]
    logp, entropy = token_logps_and_entropy(picked, trace_ids[index], lm.mask_id, temperature, top_k, top_p)
    per_token = torch.zeros(trace_ids.shape, dtype=torch.float32, device=trace_ids.device).index_put(index, logp)
    entropy = _mean(entropy, logp.numel())
    return TraceOutput(per_token, per_token.sum(-1), 1, entropy)


def trace_logps(
    lm: DiffusionLM, prompt_ids: Tensor, prompt_mask: Tensor, trace_ids: Tensor, trace_step: Tensor,
    completion_mask: Tensor, *, temperature: float, top_k: int | None = None, top_p: float | None = None,
    model: torch.nn.Module | None = None,
) -> TraceOutput:
    """The trajectory log-likelihood: one forward for block-causal unshifted families, the step loop otherwise."""
    fast = lm.block_causal and not lm.family.shift_logits
    fn = trace_logps_one_forward if fast else trace_logps_loop
    return fn(lm, prompt_ids, prompt_mask, trace_ids, trace_step, completion_mask, temperature=temperature,
              top_k=top_k, top_p=top_p, model=model)
