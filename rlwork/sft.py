"""Diffusion SFT warm start: maximise the model's own ELBO of reference solutions (completion tokens only).

Block-causal models use the clipped per-block linear schedule with 1/u weights (Stable-DiffCoder's recipe);
bidirectional ones the LLaDA schedule with 1/t weights: both come from `diffusion.masking.draw_masks("mc")`.
The loss per batch is -sum(ELBO) / (completion tokens), a per-token negative ELBO (an upper bound on the
per-token negative log-likelihood). Like Stable-DiffCoder's SFT, 1 to `max_eos` EOS tokens are appended to each
target so the model learns to stop at variable lengths.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from rlwork.diffusion.elbo import elbo
from rlwork.diffusion.masking import draw_masks
from rlwork.models import DiffusionLM
from rlwork.rollout import tokenize_prompts


def target_text(problem: dict[str, Any]) -> str:
    """The SFT target for a problem: its reference solution in one fenced Python block."""
    reference = problem.get("reference")
    if not reference:
        raise ValueError(f"task {problem.get('task_id')!r} has no 'reference' solution to fine-tune on")
    return f"```python\n{reference.rstrip()}\n```"


def encode_targets(lm: DiffusionLM, texts: list[str], num_eos: list[int]) -> tuple[Tensor, Tensor]:
    """Right-padded completion ids [N, L] ending in `num_eos[i]` EOS tokens, and their mask [N, L]."""
    encoded = [lm.tokenizer(t, add_special_tokens=False)["input_ids"] + [lm.eos_id] * k
               for t, k in zip(texts, num_eos, strict=True)]
    width = max(len(e) for e in encoded)
    ids = torch.full((len(encoded), width), lm.pad_id, dtype=torch.long)
    mask = torch.zeros(len(encoded), width, dtype=torch.bool)
    for i, e in enumerate(encoded):
        ids[i, : len(e)] = torch.tensor(e)
        mask[i, : len(e)] = True
    return ids.to(lm.device), mask.to(lm.device)


def sft_loss(lm: DiffusionLM, prompt_texts: list[str], targets: list[str], generator: torch.Generator,
             max_eos: int = 4, num_samples: int = 1, model: torch.nn.Module | None = None) -> Tensor:
    """Per-token negative ELBO of `targets` given `prompt_texts` (a 0-d tensor with grad)."""
    num_eos = torch.randint(1, max_eos + 1, (len(targets),), generator=generator).tolist()
    prompt_ids, prompt_mask = tokenize_prompts(lm.tokenizer, prompt_texts, lm.pad_id, lm.device)
    completion_ids, completion_mask = encode_targets(lm, targets, num_eos)
    draw = draw_masks("mc", completion_mask, num_samples, lm.block_size, generator, prompt_mask=prompt_mask)
    out = elbo(lm, prompt_ids, prompt_mask, completion_ids, completion_mask, draw, model=model)
    return -out.sequence.sum() / completion_mask.sum()


def run_sft(lm: DiffusionLM, problems: list[dict[str, Any]], render, *, steps: int, batch_size: int, lr: float,
            seed: int, max_eos: int = 4, samples: int = 1, log_every: int = 10, progress: bool = True) -> list[float]:
    """Full-weight diffusion SFT of `lm.model` in place with AdamW; returns the loss per step.

    `render(problem) -> prompt text` applies the same prompt format the RL trainer uses.
    """
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(seed)
    params = [p for p in lm.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / max(1, steps // 20)) * 0.5 * (1 + math.cos(math.pi * i / steps)))
    lm.model.train()
    losses = []
    bar = tqdm(range(steps), desc="sft", disable=not progress)
    for _ in bar:
        idx = torch.randint(len(problems), (batch_size,), generator=gen).tolist()
        batch = [problems[i] for i in idx]
        loss = sft_loss(lm, [render(p) for p in batch], [target_text(p) for p in batch], gen, max_eos, samples)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        schedule.step()
        losses.append(float(loss))
        if len(losses) % log_every == 0:
            bar.set_postfix(loss=sum(losses[-log_every:]) / log_every)
    lm.model.eval()
    return losses
