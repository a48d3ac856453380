"""Block-diffusion `generate` for an exported checkpoint, runnable without rlwork (torch only).

`rlwork export` copies this file into the exported folder as `rlwork_generation.py`, next to the sampler itself
(`diffusion_kernel.py`, the one rlwork trains with), and points the config's `auto_map` at a subclass of the model's
own class with `DiffusionGenerationMixin` first, so that

    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
    out = model.generate(input_ids, attention_mask=mask, max_new_tokens=64)   # [N, P + L], like HF's generate

runs the block-diffusion sampler instead of transformers' left-to-right decoding, which is wrong for a diffusion
model. The family's facts (mask/eos/pad ids, attention kind, block size, logit shift, how its `forward` is called)
and the run's sampler settings are read from the config's `rlwork` section. This file holds only what is specific
to transformers' `generate`: its settings and do_sample, the model call, and the streamer, which receives the prompt,
then each block's tokens as the block is committed (batch size 1, as in transformers).

Shape letters: N rows, P prompt columns, T query length, K key length, L = max_new_tokens, V vocabulary.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .diffusion_kernel import (
    HF_CONVENTION,
    REMASKING,
    SAMPLING_KEYS,
    allowed_attention,
    call_model,
    position_ids_from_mask,
    sample,
    up_to_first_eos,
)


def family_forward(model: Any, facts: dict, input_ids: Tensor, key_mask: Tensor, cache: Any = None) -> Tensor:
    """Aligned logits [N, T, V] of `input_ids` [N, T] under the family's attention and forward convention; key_mask:
    [N, K] bool over cached + current tokens. With a `cache`, the forward reads it and appends to it."""
    t = input_ids.shape[1]
    allowed = allowed_attention(key_mask, t, facts["attention"], facts["block_size"])
    logits, _ = call_model(model, facts.get("forward") or HF_CONVENTION, input_ids, allowed,
                           position_ids_from_mask(key_mask)[:, -t:], dtype=next(model.parameters()).dtype,
                           shift=bool(facts["shift_logits"]), cache=cache, use_cache=cache is not None)
    return logits


class _BlockStreamer:
    """`sample`'s on_block for row 0: sends each block's newly final tokens, up to and including EOS."""

    def __init__(self, streamer: Any, eos_id: int):
        self.streamer, self.eos_id, self.sent, self.open = streamer, eos_id, 0, True

    def __call__(self, rows: list[int], completion: Tensor, final: Tensor) -> None:
        if not self.open or 0 not in rows:
            return
        i = rows.index(0)
        piece = completion[i, self.sent:int(final[i])]
        eos = (piece == self.eos_id).nonzero()
        if eos.numel():
            piece, self.open = piece[: int(eos[0]) + 1], False
        if piece.numel():
            self.streamer.put(piece.cpu())
        self.sent = max(self.sent, int(final[i]))


@torch.no_grad()
def diffusion_generate(model: Any, facts: dict, input_ids: Tensor, attention_mask: Tensor | None, settings: dict,
                       generator: torch.Generator | None = None, streamer: Any = None) -> Tensor:
    """Completions [N, L] (pad after each row's first EOS) for left- or right-padded prompts [N, P].

    facts: the config's `rlwork` section (`diffusion_kernel`'s facts). settings: every key of SAMPLING_KEYS.
    Randomness (temperature > 0, random remasking) comes from `generator`, or torch's global generator when None.
    """
    if settings["remasking"] not in REMASKING:
        raise ValueError(f"remasking={settings['remasking']!r}: use one of {', '.join(REMASKING)}")
    on_block = None
    if streamer is not None:
        if input_ids.shape[0] != 1:
            raise ValueError("a streamer takes one prompt at a time (batch size 1), as in transformers")
        prompt = input_ids[0] if attention_mask is None else input_ids[0][attention_mask[0].bool()]
        streamer.put(prompt.cpu())
        on_block = _BlockStreamer(streamer, facts["eos_token_id"])
    run = sample(lambda ids, key_mask, cache: family_forward(model, facts, ids, key_mask, cache), facts, input_ids,
                 attention_mask, settings, generator=generator, model_config=model.config, on_block=on_block)
    if streamer is not None:
        streamer.end()
    return run.ids.masked_fill(~up_to_first_eos(run.ids, facts["eos_token_id"]), facts["pad_token_id"])


class DiffusionGenerationMixin:
    """`generate` by block diffusion for a transformers model class (put it first among the bases)."""

    def generate(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None, *,
                 generator: torch.Generator | None = None, streamer: Any = None, do_sample: bool | None = None,
                 **settings: Any) -> Tensor:
        """Prompt and completion ids, [N, P + L] (prompts as given, completions padded after EOS), like
        transformers' `generate`. Sampler settings (SAMPLING_KEYS) default to the run's, except that, as in
        transformers, decoding is greedy (temperature 0) unless do_sample=True (the run's temperature, 1.0 if it
        was 0) or a temperature > 0 is given."""
        facts = getattr(self.config, "rlwork", None)
        if not isinstance(facts, dict):
            raise ValueError("this checkpoint's config.json has no 'rlwork' section: export it with `rlwork export`")
        unknown = sorted(set(settings) - set(SAMPLING_KEYS) - {"pad_token_id", "eos_token_id"})
        if unknown:
            raise ValueError(f"generate() of a diffusion model takes {', '.join(SAMPLING_KEYS)}; not {unknown}")
        chosen = {**facts["sampler"], **{k: v for k, v in settings.items() if k in SAMPLING_KEYS}}
        if do_sample is False or (not do_sample and "temperature" not in settings):
            chosen["temperature"] = 0.0
        elif do_sample and not chosen["temperature"]:
            chosen["temperature"] = 1.0
        if input_ids is None:
            raise ValueError("generate() needs input_ids (the tokenized prompts, left-padded)")
        completion = diffusion_generate(self, facts, input_ids, attention_mask, chosen, generator, streamer)
        return torch.cat([input_ids, completion], dim=1)
