"""ELBO estimators on the tiny coders: one-forward vs reference loops, determinism, exact enumeration, variance."""

import dataclasses

import pytest
import torch

from rlwork.diffusion.elbo import block_elbo_loop, doubled_inputs, elbo
from rlwork.diffusion.masking import ESTIMATORS, draw_masks
from rlwork.models import DiffusionLM, load_diffusion_lm

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def block_lm():
    return load_diffusion_lm("tiny", "stable-diffcoder")


@pytest.fixture(scope="module")
def bidir_lm():
    return load_diffusion_lm("tiny-bidirectional", "masked-diffusion")


def batch(lm, prompt_lens, completion_lens, p=8, length=11, seed=0):
    """Left-padded prompts and EOS-terminated completions (pad after EOS) of random ordinary tokens."""
    gen = torch.Generator().manual_seed(seed)
    prompt_mask = torch.arange(p)[None] >= (p - torch.tensor(prompt_lens))[:, None]
    completion_mask = torch.arange(length)[None] < torch.tensor(completion_lens)[:, None]
    prompt_ids = torch.randint(10, 1000, prompt_mask.shape, generator=gen).masked_fill(~prompt_mask, lm.pad_id)
    completion_ids = torch.randint(10, 1000, completion_mask.shape, generator=gen)
    ends = torch.tensor(completion_lens) - 1
    completion_ids[torch.arange(len(ends)), ends] = lm.eos_id
    return prompt_ids, prompt_mask, completion_ids.masked_fill(~completion_mask, lm.pad_id), completion_mask


RAGGED = ([5, 8, 3, 6, 1], [11, 7, 9, 2, 10])  # prompt lengths 5, 3, 6, 1 are not multiples of 4


# ---------------------------------------------------------------------------------------------------------------
# One forward == reference loops


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_doubled_sequence_equals_block_loop(block_lm, estimator):
    prompt_ids, prompt_mask, completion_ids, completion_mask = batch(block_lm, *RAGGED)
    draw = draw_masks(estimator, completion_mask, 2, block_lm.block_size, 11, prompt_mask=prompt_mask,
                      prompt_mask_prob=0.2 if estimator == "one_step" else 0.0)
    with torch.no_grad():
        fast = elbo(block_lm, prompt_ids, prompt_mask, completion_ids, completion_mask, draw, samples_per_call=2)
        slow = block_elbo_loop(block_lm, prompt_ids, prompt_mask, completion_ids, completion_mask, draw)
    assert fast.model_calls == 1 and slow.model_calls == 2 * 3  # at most 3 completion blocks per row (e.g. 3 + 4 + 4)
    assert torch.allclose(fast.per_token, slow.per_token, atol=1e-5, rtol=1e-5)
    assert torch.allclose(fast.per_sample, slow.per_sample, atol=1e-4, rtol=1e-5)
    assert (fast.per_token[~completion_mask] == 0).all() and (fast.per_token[draw.masks.any(0)] != 0).all()
    assert torch.allclose(fast.sequence, fast.per_token.sum(-1))


def test_tail_copy_matters(block_lm):
    """The per-block reference lets the prompt tail see noisy block 0: dropping the tail copy must break equality."""
    prompt_ids, prompt_mask, completion_ids, completion_mask = batch(block_lm, [5], [7], length=7)
    noisy = completion_ids.clone()
    noisy[:, :2] = block_lm.mask_id
    ids, allowed, pos = doubled_inputs(prompt_ids, prompt_mask, completion_ids, noisy, completion_mask, 4)
    with torch.no_grad():
        full, _ = block_lm.forward(ids, allowed=allowed, position_ids=pos)
        cut = allowed.clone()
        cut[:, :, :, 8 + 7:8 + 7 + 3] = False  # noisy queries no longer see the tail copy
        broken, _ = block_lm.forward(ids, allowed=cut, position_ids=pos)
        reference, _ = block_lm.forward(torch.cat([prompt_ids, noisy[:, :3]], 1),
                                        torch.cat([prompt_mask, completion_mask[:, :3]], 1))
    assert torch.allclose(full[:, -7:-4], reference[:, -3:], atol=1e-5)
    assert not torch.allclose(broken[:, -7:-4], reference[:, -3:], atol=1e-3)


@pytest.mark.parametrize("shift", [False, True])
def test_bidirectional_batch_equals_unpadded_rows(bidir_lm, shift):
    lm = DiffusionLM(bidir_lm.model, bidir_lm.tokenizer, dataclasses.replace(bidir_lm.family, shift_logits=shift))
    prompt_ids, prompt_mask, completion_ids, completion_mask = batch(lm, *RAGGED)
    draw = draw_masks("stratified", completion_mask, 2, None, 5)
    with torch.no_grad():
        out = elbo(lm, prompt_ids, prompt_mask, completion_ids, completion_mask, draw)
        for s in range(2):
            for n in range(len(RAGGED[0])):
                prompt, comp = prompt_ids[n][prompt_mask[n]], completion_ids[n][completion_mask[n]]
                masks = draw.masks[s, n][completion_mask[n]]
                ids = torch.cat([prompt, comp.masked_fill(masks, lm.mask_id)])[None]
                logits, _ = lm.forward(ids)
                logp = torch.log_softmax(logits[0, len(prompt):], -1).gather(-1, comp[:, None])[:, 0]
                expected = (logp * draw.weights[s, n][completion_mask[n]])[masks].sum() * 2
                assert torch.allclose(out.per_sample[s, n], expected, atol=1e-4)
    assert out.model_calls == 2


# ---------------------------------------------------------------------------------------------------------------
# Determinism, old/new ratio, gradients


@pytest.mark.parametrize("which", ["block", "bidir"])
def test_same_draw_same_weights_ratio_is_exactly_one(block_lm, bidir_lm, which):
    lm = block_lm if which == "block" else bidir_lm
    prompt_ids, prompt_mask, completion_ids, completion_mask = batch(lm, *RAGGED)
    args = (prompt_ids, prompt_mask, completion_ids, completion_mask)
    draw = draw_masks("coupled", completion_mask, 4, lm.block_size, 21, prompt_mask=prompt_mask)
    again = draw_masks("coupled", completion_mask, 4, lm.block_size, 21, prompt_mask=prompt_mask)
    current = elbo(lm, *args, draw, samples_per_call=4)  # grads on, as for the policy being trained
    with torch.no_grad():
        old = elbo(lm, *args, again, samples_per_call=4)
    assert torch.equal(current.per_token.detach(), old.per_token)
    assert torch.equal(torch.exp(current.sequence - old.sequence), torch.ones(len(RAGGED[0])))
    # chunking changes only the batching, not the estimate
    with torch.no_grad():
        chunked = elbo(lm, *args, draw, samples_per_call=1)
    assert chunked.model_calls == 4 and torch.allclose(chunked.per_token, old.per_token, atol=1e-5)
    # differentiable: every parameter that the loss touches gets a gradient
    lm.model.zero_grad()
    current.sequence.mean().backward()
    grads = [p.grad for p in lm.model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert lm.model.get_input_embeddings().weight.grad.abs().sum() > 0
    lm.model.zero_grad()


def test_draw_must_match_model_and_batch(block_lm, bidir_lm):
    prompt_ids, prompt_mask, completion_ids, completion_mask = batch(block_lm, *RAGGED)
    args = (prompt_ids, prompt_mask, completion_ids, completion_mask)
    with torch.no_grad(), pytest.raises(ValueError, match="block_size=None"):
        elbo(bidir_lm, *args, draw_masks("mc", completion_mask, 1, 4, 0, prompt_mask=prompt_mask))
    with torch.no_grad(), pytest.raises(ValueError, match="block_size=lm.block_size"):
        elbo(block_lm, *args, draw_masks("mc", completion_mask, 1, None, 0))
    other = draw_masks("mc", completion_mask, 1, 4, 0, prompt_mask=prompt_mask.roll(1, 0))
    with torch.no_grad(), pytest.raises(ValueError, match="offsets"):
        elbo(block_lm, *args, other)
