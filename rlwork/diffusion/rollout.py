"""Phase 1 of a step: prompts -> G completions each, with the batched block-diffusion sampler.

Shape letters: B prompts, G generations per prompt, N = B*G rows (grouped contiguously), P prompt length,
L completion length.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from rlwork.diffusion.sampler import SamplerConfig, generate
from rlwork.models.lm import DiffusionLM


@dataclass(frozen=True)
class Rollout:
    """One step's completions.

    Attributes:
        prompt_ids: [N, P] int64, left-padded with pad.
        prompt_mask: [N, P] bool; real prompt tokens.
        completion_ids: [N, L] int64; after the first EOS: pad.
        completion_mask: [N, L] bool; real completion tokens, EOS included.
        group_ids: [N] int64; rows that share a prompt share an id.
        decode_step: [N, L] int64; the sampler step that committed each token (-1 for padding).
        sampling_per_token_logps: [N, L] float32; each real token's log-prob under the distribution the sampler drew
            it from (rlwork.diffusion.sampler); 0 on padding. The old policy's trace log-probs, free.
        trace_ids: [N, L] int64; every token the sampler committed, including those after the first EOS inside
            the row's last block (rlwork.diffusion.trace conditions on them); pad where nothing was committed.
        trace_step: [N, L] int64; the step that committed each token of trace_ids; -1 where nothing was.
        prompts: N prompt texts as the model saw them.
        completions: N decoded completion texts (special tokens dropped).
        problems: N problem rows (dataset columns the rewards read), shared within a group.
        num_forwards: model forward calls the sampler made.
    """

    prompt_ids: Tensor
    prompt_mask: Tensor
    completion_ids: Tensor
    completion_mask: Tensor
    group_ids: Tensor
    decode_step: Tensor
    sampling_per_token_logps: Tensor
    trace_ids: Tensor
    trace_step: Tensor
    prompts: list[str]
    completions: list[str]
    problems: list[dict[str, Any]]
    num_forwards: int

    @property
    def num_tokens(self) -> int:
        return int(self.completion_mask.sum())

    def select(self, rows: Tensor) -> Rollout:
        """The rollout restricted to `rows` ([M] int64 indices)."""
        idx = rows.tolist()
        return Rollout(
            prompt_ids=self.prompt_ids[rows], prompt_mask=self.prompt_mask[rows],
            completion_ids=self.completion_ids[rows], completion_mask=self.completion_mask[rows],
            group_ids=self.group_ids[rows], decode_step=self.decode_step[rows],
            sampling_per_token_logps=self.sampling_per_token_logps[rows], trace_ids=self.trace_ids[rows],
            trace_step=self.trace_step[rows],
            prompts=[self.prompts[i] for i in idx], completions=[self.completions[i] for i in idx],
            problems=[self.problems[i] for i in idx], num_forwards=self.num_forwards,
        )


def concat_rollouts(a: Rollout, b: Rollout, pad_id: int) -> Rollout:
    """Rows of `a` then rows of `b`, prompts re-padded on the left and completions on the right to one width."""
    p, length = max(a.prompt_ids.shape[1], b.prompt_ids.shape[1]), max(a.completion_ids.shape[1],
                                                                       b.completion_ids.shape[1])

    def left(x: Tensor, value: Any) -> Tensor:
        pad = torch.full((x.shape[0], p - x.shape[1]), value, dtype=x.dtype, device=x.device)
        return torch.cat([pad, x], dim=1)

    return Rollout(
        prompt_ids=torch.cat([left(a.prompt_ids, pad_id), left(b.prompt_ids, pad_id)]),
        prompt_mask=torch.cat([left(a.prompt_mask, False), left(b.prompt_mask, False)]),
        completion_ids=torch.cat([_pad_right(a.completion_ids, length, pad_id),
                                  _pad_right(b.completion_ids, length, pad_id)]),
        completion_mask=torch.cat([_pad_right(a.completion_mask, length, False),
                                   _pad_right(b.completion_mask, length, False)]),
        group_ids=torch.cat([a.group_ids, b.group_ids + int(a.group_ids.max()) + 1]),
        decode_step=torch.cat([_pad_right(a.decode_step, length, -1), _pad_right(b.decode_step, length, -1)]),
        sampling_per_token_logps=torch.cat([_pad_right(a.sampling_per_token_logps, length, 0.0),
                                            _pad_right(b.sampling_per_token_logps, length, 0.0)]),
        trace_ids=torch.cat([_pad_right(a.trace_ids, length, pad_id), _pad_right(b.trace_ids, length, pad_id)]),
        trace_step=torch.cat([_pad_right(a.trace_step, length, -1), _pad_right(b.trace_step, length, -1)]),
        prompts=a.prompts + b.prompts, completions=a.completions + b.completions, problems=a.problems + b.problems,
        num_forwards=a.num_forwards + b.num_forwards,
    )


def tokenize_prompts(tokenizer: Any, texts: Sequence[str], pad_id: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Left-padded prompt ids [N, P] and mask [N, P]; no special tokens are added beyond what the text has."""
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    if any(len(e) == 0 for e in encoded):
        raise ValueError("an empty prompt cannot be completed: every problem needs prompt text")
    width = max(len(e) for e in encoded)
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(encoded), width, dtype=torch.bool)
    for i, e in enumerate(encoded):
        ids[i, width - len(e):] = torch.tensor(e)
        mask[i, width - len(e):] = True
    return ids.to(device), mask.to(device)


def decode_completions(tokenizer: Any, completion_ids: Tensor, completion_mask: Tensor) -> list[str]:
    """Completion texts without special tokens (EOS, pad, mask)."""
    return [
        tokenizer.decode(ids[mask].tolist(), skip_special_tokens=True)
        for ids, mask in zip(completion_ids.cpu(), completion_mask.cpu(), strict=True)
    ]


def generate_rollouts(
    lm: DiffusionLM,
    problems: Sequence[dict[str, Any]],
    prompt_texts: Sequence[str],
    num_generations: int,
    sampler_config: SamplerConfig,
    generator: torch.Generator | Callable[[int], torch.Generator],
    rollout_batch_size: int,
    model: torch.nn.Module | None = None,
    progress: bool = False,
) -> Rollout:
    """G completions for each of the B prompts, generated in batches of `rollout_batch_size` rows.

    `model` is the module to run (the peft/DeepSpeed wrapper of the policy). `progress` shows a bar of rows sampled,
    with its ETA (pass it on rank 0 only). Rows are grouped contiguously:
    row b*G + g is generation g of prompt b. `generator` is one generator for every batch, or a function from a
    batch's first row to that batch's generator (the trainer keys randomness by global row this way).
    """
    if len(problems) != len(prompt_texts):
        raise ValueError(f"{len(problems)} problems but {len(prompt_texts)} prompt texts")
    texts = [t for t in prompt_texts for _ in range(num_generations)]
    rows = [p for p in problems for _ in range(num_generations)]
    prompt_ids, prompt_mask = tokenize_prompts(lm.tokenizer, texts, lm.pad_id, lm.device)
    pieces, num_forwards = [], 0
    with torch.no_grad(), tqdm(total=len(texts), desc="rollout", unit="row", leave=False, disable=not progress) as bar:
        for start in range(0, len(texts), rollout_batch_size):
            chunk = slice(start, start + rollout_batch_size)
            ids, mask = _trim_left(prompt_ids[chunk], prompt_mask[chunk])
            gen = generator(start) if callable(generator) else generator
            out = generate(lm, ids, mask, sampler_config, generator=gen, model=model)
            pieces.append(out)
            num_forwards += out.num_forwards
            bar.update(ids.shape[0])
    width = max(p.completion_ids.shape[1] for p in pieces)
    completion_ids = torch.cat([_pad_right(p.completion_ids, width, lm.pad_id) for p in pieces])
    completion_mask = torch.cat([_pad_right(p.completion_mask, width, False) for p in pieces])
    decode_step = torch.cat([_pad_right(p.decode_step, width, -1) for p in pieces])
    sampling_logps = torch.cat([_pad_right(p.sampling_per_token_logps, width, 0.0) for p in pieces])
    trace_ids = torch.cat([_pad_right(p.trace_ids, width, lm.pad_id) for p in pieces])
    trace_step = torch.cat([_pad_right(p.trace_step, width, -1) for p in pieces])
    group_ids = torch.arange(len(problems), device=completion_ids.device).repeat_interleave(num_generations)
    return Rollout(
        prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=completion_ids,
        completion_mask=completion_mask, group_ids=group_ids, decode_step=decode_step,
        sampling_per_token_logps=sampling_logps, trace_ids=trace_ids, trace_step=trace_step, prompts=texts,
        completions=decode_completions(lm.tokenizer, completion_ids, completion_mask), problems=rows,
        num_forwards=num_forwards,
    )


def _trim_left(ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Drop columns that are padding in every row of a chunk."""
    first = int(mask.any(0).long().argmax())
    return ids[:, first:], mask[:, first:]


def _pad_right(x: Tensor, width: int, value: Any) -> Tensor:
    if x.shape[1] == width:
        return x
    pad = torch.full((x.shape[0], width - x.shape[1]), value, dtype=x.dtype, device=x.device)
    return torch.cat([x, pad], dim=1)
