"""The naive reference sampler: batch 1, the whole sequence recomputed at every denoising step, no cache.

It defines what `rlwork.diffusion.sampler.generate` must reproduce (token for token at temperature 0): the same
block partition (block-causal: blocks aligned to the sequence start, so the first generated block completes the
prompt's last partial block, as in Stable-DiffCoder's official `generate_block`; bidirectional: blocks start at
the completion, as in LLaDA's `generate`), the same per-step schedule and scores, and the same EOS rule (a
completed block whose completion tokens contain EOS ends the row). It is slow on purpose and written for reading:
one row at a time, Python integers, `torch.topk` for the selection.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlwork.diffusion.sampler import (
    Generation,
    SamplerConfig,
    check_generator,
    finalize,
    propose,
    resolve_block_size,
)
from rlwork.models.lm import DiffusionLM


def _blocks(prompt_len: int, length: int, block: int, aligned_to_sequence: bool) -> list[tuple[int, int]]:
    """Completion-relative [lo, hi) ranges of each block."""
    offset = prompt_len if aligned_to_sequence else 0
    ids = [(offset + j) // block for j in range(length)]
    return [(ids.index(b), len(ids) - ids[::-1].index(b)) for b in sorted(set(ids))]


@torch.no_grad()
def naive_generate(
    lm: DiffusionLM,
    prompt_ids: Tensor,
    prompt_mask: Tensor | None,
    config: SamplerConfig,
    *,
    generator: torch.Generator | None = None,
) -> Generation:
    """Reference sampler, one row at a time. Same arguments and output as `generate` (no cache option)."""
    block = resolve_block_size(lm, config)
    check_generator(lm, config, generator)
    if prompt_mask is None:
        prompt_mask = torch.ones_like(prompt_ids, dtype=torch.bool)
    length, sps = config.max_new_tokens, config.steps_per_block
    all_ids, all_steps, all_logps, row_steps, forwards = [], [], [], [], 0
    for ids_row, mask_row in zip(prompt_ids, prompt_mask, strict=True):
        prompt = ids_row[mask_row.bool()]
        p = prompt.numel()
        x = torch.cat([prompt, torch.full((length,), lm.mask_id, dtype=torch.long, device=prompt.device)])[None]
        decode_step = torch.full((length,), -1, dtype=torch.long, device=prompt.device)
        logps = torch.zeros(length, dtype=torch.float64, device=prompt.device)
        step = 0
        for lo, hi in _blocks(p, length, block, lm.block_causal):
            num_masked = hi - lo
            schedule = [num_masked // sps + (j < num_masked % sps) for j in range(sps)]
            for count in schedule:
                still = (x[0, p + lo:p + hi] == lm.mask_id).nonzero().squeeze(1)
                if count == 0 or still.numel() == 0:
                    continue
                logits, _ = lm.forward(x)  # the whole sequence, every step
                forwards += 1
                x0, confidence, logp = propose(logits[:, p + lo:p + hi], config, lm.mask_id, generator)
                x0, confidence, logp = x0[0], confidence[0], logp[0]
                masked = x[0, p + lo:p + hi] == lm.mask_id
                confidence = torch.where(masked, confidence, float("-inf"))
                k = count
                if config.threshold is not None:
                    k = max(k, int((confidence >= config.threshold).sum()))
                k = min(k, still.numel())
                chosen = confidence.argsort(descending=True, stable=True)[:k]  # ties: leftmost first
                x[0, p + lo + chosen] = x0[chosen]
                decode_step[lo + chosen] = step
                logps[lo + chosen] = logp[chosen]
                step += 1
            if (x[0, p + lo:p + hi] == lm.eos_id).any():
                break
        all_ids.append(x[0, p:])
        all_steps.append(decode_step)
        all_logps.append(logps)
        row_steps.append(step)
    return finalize(torch.stack(all_ids), torch.stack(all_steps), torch.stack(all_logps),
                    torch.tensor(row_steps, device=prompt_ids.device), forwards, lm.eos_id, lm.pad_id, lm.mask_id)
