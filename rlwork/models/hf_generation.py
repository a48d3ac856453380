"""Block-diffusion `generate` for an exported Instruct checkpoint, runnable without rlwork (torch only).

`rlwork export` copies this file into the exported folder as `rlwork_generation.py` and points the config's
`auto_map` at a subclass of the model's own class with `DiffusionGenerationMixin` first, so that

    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
    out = model.generate(input_ids, attention_mask=mask, max_new_tokens=64)   # [N, P + L], like HF's generate

runs the block-diffusion sampler instead of transformers' left-to-right decoding, which is wrong for a diffusion
model. It is a standalone port of `rlwork.diffusion.sampler.generate` (same layout, schedule, remasking scores,
EOS rule and KV cache), kept separate because the export must run where rlwork is not installed; rlwork's tests
check that both give the same tokens. The family facts (mask/eos/pad ids, attention kind, block size, logit shift)
and the run's sampler settings are read from the config's `rlwork` section.

A `streamer` (transformers' `TextStreamer`, or anything with `put(ids)` and `end()`) receives the prompt, then each
block's tokens as the block is committed (batch size 1, as in transformers).

Shape letters: N rows, P prompt columns, W layout columns, L = max_new_tokens, V vocabulary.
"""

from __future__ import annotations

import torch
from torch import Tensor

SAMPLING_KEYS = ("max_new_tokens", "steps_per_block", "block_size", "temperature", "top_k", "top_p", "remasking",
                 "threshold", "use_cache")
"""generate()'s sampler settings; their defaults come from the config's `rlwork.sampler` section."""


# ---------------------------------------------------------------------------------------------------------------
# Attention and the forward pass (rlwork.models.lm)


def _positions(key_mask: Tensor) -> Tensor:
    return (key_mask.long().cumsum(-1) - 1).clamp_min(0)


def _allowed(key_mask: Tensor, query_len: int, block_causal: bool, block_size: int | None) -> Tensor:
    n, k = key_mask.shape
    allowed = key_mask[:, None, :].expand(n, query_len, k)
    if block_causal:
        key_block = _positions(key_mask) // block_size
        query_block = key_block[:, k - query_len:]
        allowed = allowed & (key_block[:, None, :] <= query_block[:, :, None])
    own = torch.zeros(query_len, k, dtype=torch.bool, device=key_mask.device)
    own[torch.arange(query_len), torch.arange(k - query_len, k)] = True
    pad_query = ~key_mask[:, k - query_len:, None]
    return torch.where(pad_query, own[None], allowed)[:, None]


def _forward(model, facts: dict, input_ids: Tensor, key_mask: Tensor, cache, use_cache: bool) -> Tensor:
    """Aligned logits [N, T, V] of `input_ids` under the family's attention (rlwork DiffusionLM.forward)."""
    t = input_ids.shape[1]
    allowed = _allowed(key_mask, t, facts["attention"] == "block_causal", facts["block_size"])
    dtype = next(model.parameters()).dtype
    bias = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed,
                                                                                       torch.finfo(dtype).min)
    out = model(input_ids=input_ids, attention_mask=bias, position_ids=_positions(key_mask)[:, -t:], cache=cache,
                use_cache=use_cache)
    logits = out.logits
    if facts["shift_logits"]:
        logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
    return logits


# ---------------------------------------------------------------------------------------------------------------
# Per-step maths (rlwork.diffusion.sampler)


def _filter(logits: Tensor, top_k: int | None, top_p: float | None) -> Tensor:
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop_sorted = probs.cumsum(-1) - probs >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def _propose(logits: Tensor, s: dict, mask_id: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    logits = logits.to(torch.float64, copy=True)
    logits[..., mask_id] = float("-inf")
    if s["temperature"] > 0:
        scaled = _filter(logits / s["temperature"], s["top_k"], s["top_p"])
        u = torch.rand(scaled.shape, dtype=torch.float64, device=scaled.device, generator=generator)
        gumbel = -torch.log(-torch.log(u.clamp_min(torch.finfo(torch.float64).tiny)))
        x0 = (scaled + gumbel).argmax(-1)
        logits = logits.masked_fill(scaled == float("-inf"), float("-inf"))
    else:
        x0 = logits.argmax(-1)
    if s["remasking"] == "random":
        return x0, torch.rand(x0.shape, dtype=torch.float64, device=x0.device, generator=generator)
    probs = logits.softmax(-1)
    if s["remasking"] == "low_confidence":
        confidence = probs.gather(-1, x0[..., None]).squeeze(-1)
    elif s["remasking"] == "margin":
        top2 = probs.topk(2, dim=-1).values
        confidence = top2[..., 0] - top2[..., 1]
    elif s["remasking"] == "entropy":
        confidence = torch.special.xlogy(probs, probs).sum(-1)
    else:
        raise ValueError(f"remasking={s['remasking']!r}: use low_confidence, margin, entropy or random")
    return x0, confidence


def _select(masked: Tensor, confidence: Tensor, count: Tensor, threshold: float | None) -> Tensor:
    confidence = confidence.masked_fill(~masked, float("-inf"))
    if threshold is not None:
        count = torch.maximum(count, (confidence >= threshold).sum(1))
    count = torch.minimum(count, masked.sum(1))
    order = confidence.argsort(dim=1, descending=True, stable=True)
    ranks = torch.arange(masked.shape[1], device=masked.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, ranks)
    return rank < count[:, None]


def _layout(facts: dict, prompt_ids: Tensor, prompt_mask: Tensor, length: int, block: int):
    prompts = [ids[mask.bool()] for ids, mask in zip(prompt_ids, prompt_mask, strict=True)]
    lengths = [int(p.numel()) for p in prompts]
    if min(lengths) == 0:
        raise ValueError("a prompt has no real tokens (attention_mask all 0): drop it or give it a prompt")
    if facts["attention"] == "block_causal":
        padded = [-(-n // block) * block for n in lengths]
        starts = [max(padded) - c for c in padded]
        first = min((s + n) // block * block for s, n in zip(starts, lengths, strict=True))
    else:
        starts = [max(lengths) - n for n in lengths]
        first = max(lengths)
    gen_start = [s + n for s, n in zip(starts, lengths, strict=True)]
    width, dev = max(gen_start) + length, prompt_ids.device
    x = torch.full((len(prompts), width), facts["pad_token_id"], dtype=torch.long, device=dev)
    cols = torch.arange(width, device=dev)
    start_t, gen_t = torch.tensor(starts, device=dev)[:, None], torch.tensor(gen_start, device=dev)[:, None]
    gen = (cols >= gen_t) & (cols < gen_t + length)
    key_mask = (cols >= start_t) & (cols < gen_t + length)
    for i, prompt in enumerate(prompts):
        x[i, starts[i]:gen_start[i]] = prompt
    x[gen] = facts["mask_token_id"]
    return x, key_mask, gen, gen_start, [(s, min(s + block, width)) for s in range(first, width, block)]


def _new_cache(model):
    from transformers import DynamicCache

    return DynamicCache(config=model.config)


def _truncate(cache, length: int) -> None:
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


# ---------------------------------------------------------------------------------------------------------------
# The sampler


@torch.no_grad()
def diffusion_generate(model, facts: dict, input_ids: Tensor, attention_mask: Tensor | None, settings: dict,
                       generator: torch.Generator | None = None, streamer=None) -> Tensor:
    """Completions [N, L] (pad after each row's first EOS) for left- or right-padded prompts [N, P].

    facts: mask_token_id, eos_token_id, pad_token_id, attention ("block_causal" | "bidirectional"), block_size,
    shift_logits. settings: every key of SAMPLING_KEYS. Randomness (temperature > 0, random remasking) comes from
    `generator`, or torch's global generator when None.
    """
    mask_id, eos_id, pad_id = facts["mask_token_id"], facts["eos_token_id"], facts["pad_token_id"]
    block_causal = facts["attention"] == "block_causal"
    length, sps = int(settings["max_new_tokens"]), int(settings["steps_per_block"])
    block = facts["block_size"] if block_causal else (settings.get("block_size") or length)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
    x, key_mask, gen, gen_start, blocks = _layout(facts, input_ids, attention_mask.bool(), length, block)
    n, width = x.shape
    if streamer is not None:
        if n != 1:
            raise ValueError("a streamer takes one prompt at a time (batch size 1), as in transformers")
        streamer.put(input_ids[0][attention_mask[0].bool()].cpu())
    out_x = x.clone()
    rows = torch.arange(n, device=x.device)
    active = list(range(n))
    lookback = 1 if facts["shift_logits"] else 0
    cache = _new_cache(model) if settings["use_cache"] and block_causal else None
    cache_len, streamed = 0, gen_start[0]
    for s, t in blocks:
        end = t if block_causal else width
        base = max(s - lookback, 0)
        if settings["use_cache"] and not block_causal:
            cache, cache_len = _new_cache(model), 0
        most = max(min(t, g + length) - max(s, g) for g in (gen_start[i] for i in active))
        num_masked = gen[:, s:t].sum(1)
        for step in range(min(sps, most)):
            q0 = cache_len if cache is not None else 0
            logits = _forward(model, facts, x[:, q0:end], key_mask[:, :end], cache, cache is not None)
            if cache is not None:
                _truncate(cache, base)
                cache_len = base
            x0, confidence = _propose(logits[:, s - q0:t - q0], settings, mask_id, generator)
            k = num_masked // sps + (step < num_masked % sps).long()
            commit = _select(x[:, s:t] == mask_id, confidence, k, settings["threshold"])
            x[:, s:t] = torch.where(commit, x0, x[:, s:t])
            if settings["threshold"] is not None and not bool((x[:, s:t] == mask_id).any()):
                break
        done = ((x[:, s:t] == eos_id) & gen[:, s:t]).any(1)
        if streamer is not None and streamed is not None and 0 in active:
            streamed = _stream(streamer, x[active.index(0)], streamed, t, gen_start[0] + length, eos_id)
        if bool(done.any()):
            out_x[rows[done]] = x[done]
            keep = (~done).nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            x, key_mask, gen, rows = x[keep], key_mask[keep], gen[keep], rows[keep]
            active = rows.tolist()
            if cache is not None:
                cache.batch_select_indices(keep)
    else:
        out_x[rows] = x
    if streamer is not None:
        streamer.end()
    index = torch.tensor(gen_start, device=x.device)[:, None] + torch.arange(length, device=x.device)
    ids = out_x.gather(1, index)
    is_eos = ids == eos_id
    real = (is_eos.long().cumsum(1) - is_eos.long()) == 0
    return ids.masked_fill(~real, pad_id)


def _stream(streamer, row: Tensor, start: int, stop: int, gen_end: int, eos_id: int) -> int | None:
    """Send row[start:stop] (a committed block's completion columns) up to and including EOS; the next start, or
    None once EOS was sent."""
    piece = row[start:min(stop, gen_end)]
    eos = (piece == eos_id).nonzero()
    if eos.numel():
        piece = piece[: int(eos[0]) + 1]
    if piece.numel():
        streamer.put(piece.cpu())
    return None if eos.numel() or stop >= gen_end else max(stop, start)


class DiffusionGenerationMixin:
    """`generate` by block diffusion for a transformers model class (put it first among the bases)."""

    def generate(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None, *,
                 generator: torch.Generator | None = None, streamer=None, do_sample: bool | None = None,
                 **settings) -> Tensor:
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
