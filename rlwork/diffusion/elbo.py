"""Likelihood (ELBO) estimators for completions under a diffusion LM, per token and per sequence.

For masked diffusion, log p(x) >= ELBO(x) = E_t[(1/t) sum_{k masked at rate t} log p_theta(x_k | x_t)]
(LLaDA arXiv 2502.09992 Eq. 3; equivalently sum_k (1/k) E_{|M|=k} sum_{i in M} log p(x_i | x_{-M}) with exact
counts). A block-causal model factorises over blocks, so its ELBO is the sum of per-block ELBOs, each block
conditioned on the clean earlier blocks. `masking.draw_masks` decides which tokens are masked and with which
weight; this module runs the model and sums weighted log-probabilities:

    estimate[n] = sum_s sum_l draw.weights[s, n, l] * log p_theta(completion[n, l] | noisy sequence s of row n)

Block-causal models are scored with **one forward per sample** over the doubled sequence
[prompt, clean completion, noisy completion] (BD3-LM arXiv 2503.09573 Sec. 3.2; TraceRL arXiv 2509.06949):
noisy block c sees the prompt, the clean blocks < c and itself; position ids of the noisy copy equal those of
the clean copy. When the prompt length p is not a multiple of B, completion block 0 is the tail of the prompt's
last partial block: in the per-block reference those prompt tokens stay clean but attend to (and are attended
by) the noisy block-0 tokens, so the doubled sequence carries a clean **copy** of the p % B tail prompt tokens
in front of the noisy completion (B - 1 columns, left-padded). `block_elbo_loop` is the slow reference:
one ordinary block-causal forward of [prompt, clean blocks < c, noisy block c] per block.

Shape letters: S samples, N rows, P prompt length, L completion length, V vocabulary, T sequence length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rlwork.diffusion.masking import MaskDraw, apply_masks, block_offsets, completion_block_ids
from rlwork.models.lm import DiffusionLM, position_ids_from_mask


@dataclass(frozen=True)
class ElboOutput:
    """Likelihood estimates for one batch of completions.

    Attributes:
        per_token: [N, L] float32; per-token contributions, 0 outside completion_mask. Sums to `sequence`.
        sequence: [N] float32; the sequence-level ELBO estimate (mean over the draw's samples).
        per_sample: [S, N] float32; each pass's own estimate (scaled so that sequence = per_sample.mean(0)).
            Passes of coupled/stratified draws are dependent by design: do not read their spread as the
            estimator's standard error.
        model_calls: model forward calls made (depends on samples_per_call; compare costs with
            MaskDraw.num_forwards).
        entropy: 0-d float32, detached; the mean entropy (nats) of the model's predicted distribution at the masked
            completion positions it scored, over all samples (NaN when nothing was masked). The diffusion
            counterpart of TRL's `entropy` (an AR policy's entropy at every completion position).
    """

    per_token: Tensor
    sequence: Tensor
    per_sample: Tensor
    model_calls: int
    entropy: Tensor


def token_logprobs(logits: Tensor, targets: Tensor, select: Tensor, weights: Tensor) -> Tensor:
    """Weighted log p(target) at the selected positions, 0 elsewhere.

    logits: [R, L, V] (aligned: logits[:, l] predicts targets[:, l]); targets: [R, L] int64; select: [R, L] bool;
    weights: [R, L]. Returns [R, L] float32. log_softmax runs (in float32) only on the selected rows of logits.
    """
    index = select.nonzero(as_tuple=True)
    picked = torch.log_softmax(logits[index].float(), dim=-1)  # [M, V]
    logp = picked.gather(-1, targets[index][:, None]).squeeze(-1)  # [M]
    out = torch.zeros(select.shape, dtype=torch.float32, device=logits.device)
    return out.index_put(index, logp * weights[index].float())


@torch.no_grad()
def entropy_sum(logits: Tensor, select: Tensor, chunk: int = 2048) -> Tensor:
    """Sum over the selected positions of the entropy (nats) of softmax(logits), in float32, `chunk` positions at a
    time (bounded memory for large vocabularies). logits: [R, L, V]; select: [R, L] bool. Returns a 0-d tensor."""
    picked = logits[select]  # [M, V]
    total = torch.zeros((), dtype=torch.float32, device=logits.device)
    for start in range(0, picked.shape[0], chunk):
        logp = torch.log_softmax(picked[start:start + chunk].float(), dim=-1)
        total = total - (logp.exp() * logp).sum()
    return total


def doubled_inputs(
    prompt_ids: Tensor, prompt_mask: Tensor, clean_ids: Tensor, noisy_ids: Tensor, completion_mask: Tensor,
    block_size: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """The block-diffusion doubled sequence [prompt, clean completion, prompt-tail copy, noisy completion].

    prompt_ids, prompt_mask: [N, P] (left-padded); clean_ids, noisy_ids, completion_mask: [N, L]. One noisy copy of
    `block_copies_inputs`: returns input_ids [N, T], allowed [N, 1, T, T] bool, position_ids [N, T],
    T = P + 2L + B - 1; the last L columns are the noisy completion.
    """
    return block_copies_inputs(prompt_ids, prompt_mask, clean_ids, completion_mask, noisy_ids[None], completion_mask,
                               block_size)


def block_copies_inputs(
    prompt_ids: Tensor, prompt_mask: Tensor, clean_ids: Tensor, clean_mask: Tensor, noisy_ids: Tensor,
    noisy_mask: Tensor, block_size: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """[prompt, clean completion, then for each copy r: prompt-tail copy, noisy completion r] with its block mask.

    prompt_ids, prompt_mask: [N, P] (left-padded); clean_ids, clean_mask: [N, L]; noisy_ids: [R, N, L] (R copies);
    noisy_mask: [N, L], the real positions of every copy. Blocks are counted from the first real prompt token.
    Prompt and clean queries see real prompt/clean keys in blocks <= own (ordinary block-causal attention); queries of
    copy r see real prompt/clean keys in blocks < own and real keys of copy r in their own block, never another copy.
    Each tail copy (B - 1 columns, left-padded) repeats the p % B prompt tokens that share completion block 0, so
    they attend to copy r's block 0 as they do in a per-block forward. Positions of every copy equal the clean ones.
    Returns input_ids [N, T], allowed [N, 1, T, T] bool, position_ids [N, T], T = P + L + R(L + B - 1); copy r's
    noisy completion is columns [P + L + r(L + B - 1) + B - 1, P + L + (r + 1)(L + B - 1)).
    """
    n, p = prompt_ids.shape
    copies, length, dev = noisy_ids.shape[0], clean_ids.shape[1], prompt_ids.device
    prompt_len = prompt_mask.long().sum(-1)  # [N]
    tail = torch.arange(block_size - 1, device=dev)
    tail_real = tail[None] >= (block_size - 1 - block_offsets(prompt_mask, block_size))[:, None]  # [N, B-1]
    source = (p - (block_size - 1) + tail).clamp_min(0)  # prompt columns copied into the tail
    prompt_pos = position_ids_from_mask(prompt_mask)
    completion_pos = prompt_len[:, None] + torch.arange(length, device=dev)[None]  # [N, L]
    tail_ids, tail_pos = prompt_ids[:, source], prompt_pos[:, source]
    noisy = [x for r in range(copies) for x in (tail_ids, noisy_ids[r])]
    ids = torch.cat([prompt_ids, clean_ids, *noisy], 1)  # [N, T]
    real = torch.cat([prompt_mask, clean_mask, *[tail_real, noisy_mask] * copies], 1).bool()  # [N, T]
    pos = torch.cat([prompt_pos, completion_pos, *[tail_pos, completion_pos] * copies], 1)  # [N, T]
    t = ids.shape[1]
    section = torch.cat([torch.zeros(p + length, dtype=torch.long, device=dev),
                         torch.arange(1, copies + 1, device=dev).repeat_interleave(block_size - 1 + length)])  # [T]
    query_sec, key_sec = section[None, :, None], section[None, None, :]  # [1, T, 1], [1, 1, T]
    block = pos // block_size
    query_block, key_block = block[:, :, None], block[:, None, :]  # [N, T, 1], [N, 1, T]
    from_copy = ((key_sec == 0) & (key_block < query_block)) | ((key_sec == query_sec) & (key_block == query_block))
    from_clean = (key_sec == 0) & (key_block <= query_block)
    allowed = real[:, None, :] & torch.where(query_sec > 0, from_copy, from_clean)  # [N, T, T]
    allowed = allowed | (torch.eye(t, dtype=torch.bool, device=dev)[None] & ~real[:, :, None])
    return ids, allowed[:, None], pos


def elbo(
    lm: DiffusionLM,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    completion_ids: Tensor,
    completion_mask: Tensor,
    draw: MaskDraw,
    *,
    model: torch.nn.Module | None = None,
    samples_per_call: int = 1,
) -> ElboOutput:
    """ELBO of each completion given its prompt under `draw` (see masking.draw_masks for the estimators).

    prompt_ids, prompt_mask: [N, P] left-padded; completion_ids, completion_mask: [N, L] (real tokens incl. EOS;
    positions after EOS are left out of attention and scoring). Differentiable w.r.t. the model; call it under
    torch.no_grad() for old/reference policies. Block-causal models: one forward per sample over the doubled
    sequence; bidirectional models (shifted or not, `lm.forward` aligns): one forward over [prompt, noisy
    completion]. `samples_per_call` samples share one model call (more rows, fewer calls); only the log-probs
    of masked tokens are kept between calls. `model` overrides lm.model (peft/DeepSpeed wrapper).
    """
    _check(lm, prompt_mask, completion_mask, draw)
    s, (n, length) = draw.num_samples, completion_ids.shape
    pieces, calls, entropy = [], 0, torch.zeros(2, device=completion_ids.device)  # [sum, count]
    for start in range(0, s, samples_per_call):
        chunk = range(start, min(s, start + samples_per_call))
        c = len(chunk)
        prompts, prompt_keys = _masked_prompts(lm, prompt_ids, draw, chunk), _repeat(prompt_mask, c)
        clean, keys = _repeat(completion_ids, c), _repeat(completion_mask, c)
        masks = draw.masks[start:start + c].flatten(0, 1)  # [c*N, L]
        noisy = apply_masks(clean, masks, lm.mask_id)
        if lm.block_causal:
            ids, allowed, pos = doubled_inputs(prompts, prompt_keys, clean, noisy, keys, lm.block_size)
            logits, _ = lm.forward(ids, allowed=allowed, position_ids=pos, model=model, logits_to_keep=length)
        else:
            logits, _ = lm.forward(torch.cat([prompts, noisy], 1), torch.cat([prompt_keys, keys], 1), model=model,
                                   logits_to_keep=length)
        calls += 1
        select = masks & keys.bool()
        weights = draw.weights[start:start + c].flatten(0, 1)
        pieces.append(token_logprobs(logits[:, -length:], clean, select, weights).view(c, n, length))
        entropy += torch.stack([entropy_sum(logits[:, -length:], select), select.sum().float()])
        del logits
    return _output(torch.cat(pieces), calls, entropy)


def block_elbo_loop(lm: DiffusionLM, prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor,
                    completion_mask: Tensor, draw: MaskDraw, *, model: torch.nn.Module | None = None) -> ElboOutput:
    """Slow reference for block-causal models: per sample and completion block c, one ordinary block-causal
    forward of [prompt, clean blocks < c, noisy block c] (later blocks left out of the key mask).

    Same arguments and result as `elbo`; costs S * C model calls of length P + L instead of S calls.
    """
    _check(lm, prompt_mask, completion_mask, draw)
    if not lm.block_causal:
        raise ValueError("block_elbo_loop is the reference for block-causal models; use elbo() for bidirectional")
    s, length = draw.num_samples, completion_ids.shape[1]
    blk = completion_block_ids(draw.block_offset, length, draw.block_size)  # [N, L]
    num_blocks = int(blk[completion_mask.bool()].max()) + 1 if completion_mask.any() else 0
    pieces, calls, entropy = [], 0, torch.zeros(2, device=completion_ids.device)  # [sum, count]
    for i in range(s):
        prompts = _masked_prompts(lm, prompt_ids, draw, range(i, i + 1))
        noisy = apply_masks(completion_ids, draw.masks[i], lm.mask_id)
        total = torch.zeros(completion_ids.shape, dtype=torch.float32, device=completion_ids.device)
        for c in range(num_blocks):
            ids = torch.cat([prompts, torch.where(blk < c, completion_ids, noisy)], 1)
            keys = torch.cat([prompt_mask, completion_mask.bool() & (blk <= c)], 1)
            logits, _ = lm.forward(ids, keys, model=model)
            calls += 1
            select = draw.masks[i] & completion_mask.bool() & (blk == c)
            total = total + token_logprobs(logits[:, -length:], completion_ids, select, draw.weights[i])
            entropy += torch.stack([entropy_sum(logits[:, -length:], select), select.sum().float()])
        pieces.append(total)
    return _output(torch.stack(pieces), calls, entropy)


def _repeat(x: Tensor, times: int) -> Tensor:
    """[N, ...] -> [times * N, ...], sample-major (rows of one sample are contiguous)."""
    return x[None].expand(times, *x.shape).flatten(0, 1)


def _output(contributions: Tensor, calls: int, entropy: Tensor) -> ElboOutput:
    """contributions: [S, N, L] weighted log-probs (weights include 1/S); entropy: [2] (sum, count) over the
    scored positions."""
    per_token = contributions.sum(0)  # [N, L]
    mean_entropy = entropy[0] / entropy[1] if entropy[1] > 0 else torch.tensor(float("nan"))
    return ElboOutput(per_token, per_token.sum(-1), contributions.sum(-1) * contributions.shape[0], calls,
                      mean_entropy.detach())


def _masked_prompts(lm: DiffusionLM, prompt_ids: Tensor, draw: MaskDraw, chunk: range) -> Tensor:
    """Prompts of the given samples, with d1 prompt masking applied: [len(chunk) * N, P]."""
    prompts = prompt_ids[None].expand(len(chunk), *prompt_ids.shape)
    if draw.prompt_masks is not None:
        prompts = apply_masks(prompts, draw.prompt_masks[chunk.start:chunk.stop], lm.mask_id)
    return prompts.flatten(0, 1)


def _check(lm: DiffusionLM, prompt_mask: Tensor, completion_mask: Tensor, draw: MaskDraw) -> None:
    if draw.masks.shape[1:] != completion_mask.shape:
        raise ValueError(
            f"the draw is for completions of shape {tuple(draw.masks.shape[1:])}, got {tuple(completion_mask.shape)}:"
            " draw the masks for this batch"
        )
    if lm.block_causal:
        if lm.family.shift_logits:
            raise ValueError("block-causal models with shifted logits are not supported by the doubled sequence")
        if draw.block_size != lm.block_size:
            raise ValueError(
                f"the draw was made with block_size={draw.block_size} but the model's block size is "
                f"{lm.block_size}: pass block_size=lm.block_size to draw_masks"
            )
        if not torch.equal(draw.block_offset, block_offsets(prompt_mask, lm.block_size)):
            raise ValueError("the draw's block offsets do not match these prompts: draw with this prompt_mask")
    elif draw.block_size is not None:
        raise ValueError("the draw is block-wise but the model is bidirectional: pass block_size=None to draw_masks")
