"""Forward process: schedules and weights against hand-computed cases, draw invariants, seeds."""

import pytest
import torch

from rlwork.diffusion.masking import (
    ESTIMATORS,
    MaskDraw,
    apply_masks,
    block_offsets,
    clipped_mask_rate,
    completion_block_ids,
    draw_group_masks,
    draw_masks,
    linear_mask_rate,
)

B = 4


def ragged(prompt_lens, completion_lens, p=8, length=11):
    prompt_mask = torch.arange(p)[None] >= (p - torch.tensor(prompt_lens))[:, None]
    completion_mask = torch.arange(length)[None] < torch.tensor(completion_lens)[:, None]
    return prompt_mask, completion_mask


def test_schedules_hand_cases():
    t = torch.tensor([0.0, 0.5, 0.8, 1.0])
    # u = 1 - t = [1, .5, .2, 0] clipped to [1/4, 1]; weights 1/u = [1, 2, 4, 4]
    assert torch.allclose(clipped_mask_rate(t, 4), torch.tensor([1.0, 0.5, 0.25, 0.25]))
    assert torch.allclose(1 / clipped_mask_rate(t, 4), torch.tensor([1.0, 2.0, 4.0, 4.0]))
    # LLaDA: (1 - 0.1) t + 0.1
    assert torch.allclose(linear_mask_rate(torch.tensor([0.0, 0.5, 1.0]), 0.1), torch.tensor([0.1, 0.55, 1.0]))


def test_block_ids_align_to_sequence_start():
    prompt_mask, _ = ragged([5, 8, 3], [6, 6, 6], length=6)
    offset = block_offsets(prompt_mask, B)
    assert offset.tolist() == [1, 0, 3]
    blk = completion_block_ids(offset, 6, B)
    assert blk.tolist() == [[0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 1, 1], [0, 1, 1, 1, 1, 2]]
    assert completion_block_ids(None, 3, None).tolist() == [[0, 0, 0]]


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("block_size", [B, None])
def test_draw_invariants(estimator, block_size):
    prompt_mask, completion_mask = ragged([5, 8, 3, 6], [11, 7, 9, 2])
    draw = draw_masks(estimator, completion_mask, 6, block_size, 3, prompt_mask=prompt_mask)
    assert draw.masks.shape == (6, 4, 11) and draw.num_forwards == 6
    assert not (draw.masks & ~completion_mask).any()  # nothing after EOS is masked
    assert torch.equal(draw.weights != 0, draw.masks)
    on = draw.masks
    assert torch.allclose(draw.weights[on], 1 / draw.ratios[on] / 6)
    gen = torch.Generator().manual_seed(3)
    again = draw_masks(estimator, completion_mask, 6, block_size, gen, prompt_mask=prompt_mask)
    assert torch.equal(again.masks, draw.masks) and torch.equal(again.weights, draw.weights)


def test_seeds_change_draws():
    prompt_mask, completion_mask = ragged([5, 8, 3, 6], [11, 7, 9, 2])
    a = draw_masks("mc", completion_mask, 4, B, 0, prompt_mask=prompt_mask)
    b = draw_masks("mc", completion_mask, 4, B, 1, prompt_mask=prompt_mask)
    assert not torch.equal(a.masks, b.masks)


@pytest.mark.parametrize("block_size", [B, None])
def test_coupled_scores_every_token_once_per_pair(block_size):
    prompt_mask, completion_mask = ragged([5, 8, 3, 6], [11, 7, 9, 2])
    draw = draw_masks("coupled", completion_mask, 8, block_size, 0, prompt_mask=prompt_mask, t_range=(0.1, 0.9))
    pairs = draw.masks.view(4, 2, 4, 11).long().sum(1)  # [S/2, N, L]
    assert torch.equal(pairs, completion_mask.long()[None].expand(4, -1, -1))
    ratios = draw.ratios.view(4, 2, 4, 11)
    assert torch.allclose(ratios[:, 0] + ratios[:, 1], torch.ones(4, 4, 11))
    t = ratios[:, 0][completion_mask[None].expand(4, -1, -1)]
    assert t.min() >= 0.1 and t.max() <= 0.9


def test_stratified_counts_cover_all_levels():
    # block-causal row with prompt length 5: completion blocks of 3 and 4 tokens (n + 1 = 4 and 5 levels)
    prompt_mask, completion_mask = ragged([5], [7], length=7)
    draw = draw_masks("stratified", completion_mask, 2 * 20, B, 7, prompt_mask=prompt_mask)
    first = draw.masks.view(20, 2, 7)[:, 0]  # the count-stratified passes
    counts0, counts1 = first[:, :3].sum(-1), first[:, 3:].sum(-1)
    # 20 pairs stratified over 4 (5) levels: each level appears exactly 5 (4) times
    assert torch.bincount(counts0, minlength=4).tolist() == [5, 5, 5, 5]
    assert torch.bincount(counts1, minlength=5).tolist() == [4, 4, 4, 4, 4]
    complement = draw.masks.view(20, 2, 7)[:, 1]
    assert torch.equal(first ^ complement, completion_mask.expand(20, -1))
    # weights: (n + 1)/x / S for the first pass, (n + 1)/(n - x) / S for the complement
    w = draw.weights.view(20, 2, 7)
    for i in range(20):
        x = int(counts1[i])
        if x:
            assert torch.allclose(w[i, 0, 3:][first[i, 3:]], torch.full((x,), 5 / x / 40))
        if x < 4:
            assert torch.allclose(w[i, 1, 3:][complement[i, 3:]], torch.full((4 - x,), 5 / (4 - x) / 40))


def test_clipped_force_mask():
    prompt_mask, completion_mask = ragged([5, 8, 3, 6] * 8, [11, 7, 9, 2] * 8)
    blk = completion_block_ids(block_offsets(prompt_mask, B), 11, B)
    onehot = torch.nn.functional.one_hot(blk, 4).bool() & completion_mask[..., None]  # [N, L, C]
    has_tokens = onehot.any(1)  # [N, C]
    for force in (True, False):
        draw = draw_masks("mc", completion_mask, 16, B, 0, prompt_mask=prompt_mask, force_mask=force)
        hit = (draw.masks[..., None] & onehot[None]).any(2)  # [S, N, C]
        empty_blocks = (has_tokens[None] & ~hit).sum()
        assert (empty_blocks == 0) == force
        rates = draw.ratios[draw.masks]
        assert rates.min() >= 0.25 and rates.max() <= 1.0 and (draw.weights[draw.masks] * 16).max() <= 4.0


def test_mc_linear_mask_fraction():
    # rate ~ U(eps, 1): expected masked fraction (1 + eps) / 2
    completion_mask = torch.ones(200, 16, dtype=torch.bool)
    draw = draw_masks("mc", completion_mask, 20, None, 0, eps=0.1)
    assert abs(draw.masks.float().mean().item() - 0.55) < 0.01
    # one t per row and sample: all of a row's tokens share its ratio
    assert torch.equal(draw.ratios.amin(-1), draw.ratios.amax(-1))


def test_one_step_and_prompt_masking():
    prompt_mask, completion_mask = ragged([5, 8, 3, 6], [11, 7, 9, 2])
    draw = draw_masks("one_step", completion_mask, 2, None, 0, prompt_mask=prompt_mask, prompt_mask_prob=0.5)
    assert torch.equal(draw.masks, completion_mask[None].expand(2, -1, -1))
    assert torch.equal(draw.weights, completion_mask[None].expand(2, -1, -1).float() / 2)
    assert not (draw.prompt_masks & ~prompt_mask).any() and draw.prompt_masks.any()
    ids = torch.arange(8)[None].expand(4, -1)
    masked = apply_masks(ids, draw.prompt_masks[0], 5)
    assert torch.equal(masked == 5, draw.prompt_masks[0] | (ids == 5))


def test_errors_name_the_fix():
    prompt_mask, completion_mask = ragged([5], [7], length=7)
    with pytest.raises(ValueError, match="choose one of mc, coupled"):
        draw_masks("elbo", completion_mask, 2, None, 0)
    with pytest.raises(ValueError, match="even"):
        draw_masks("coupled", completion_mask, 3, None, 0)
    with pytest.raises(ValueError, match="prompt_mask"):
        draw_masks("mc", completion_mask, 2, B, 0)
    with pytest.raises(ValueError, match="linear"):
        draw_masks("mc", completion_mask, 2, None, 0, schedule="clipped")
    with pytest.raises(ValueError, match="shape"):
        MaskDraw("custom", torch.zeros(1, 2, 3, dtype=torch.bool), torch.zeros(1, 2), torch.zeros(1, 2, 3), None,
                 None, None)


def test_select_rows_keeps_each_rows_draw():
    from rlwork.diffusion.masking import select_rows

    completion_mask = torch.ones(5, 8, dtype=torch.bool)
    prompt_mask = torch.ones(5, 3, dtype=torch.bool)
    draw = draw_masks("coupled", completion_mask, 2, 4, torch.Generator().manual_seed(0), prompt_mask=prompt_mask)
    rows = torch.tensor([4, 1])
    part = select_rows(draw, rows)
    assert torch.equal(part.masks, draw.masks[:, rows]) and torch.equal(part.weights, draw.weights[:, rows])
    assert torch.equal(part.block_offset, draw.block_offset[rows])
    assert torch.equal(select_rows(draw, slice(1, 3)).ratios, draw.ratios[:, 1:3])


def _groups():
    """Two groups of three completions (one prompt each), ragged completion lengths."""
    prompt_mask, completion_mask = ragged([5, 5, 5, 7, 7, 7], [11, 6, 9, 3, 11, 8])
    return prompt_mask, completion_mask, torch.tensor([0, 0, 0, 1, 1, 1])


@pytest.mark.parametrize("estimator", ["coupled", "mc", "one_step"])
@pytest.mark.parametrize("block_size", [B, None])
def test_group_draw_shares_positions_and_rates_within_a_group(estimator, block_size):
    prompt_mask, completion_mask, groups = _groups()
    draw = draw_group_masks(estimator, completion_mask, groups, 4, block_size,
                            lambda g: torch.Generator().manual_seed(100 + g), prompt_mask=prompt_mask)
    assert draw.masks.shape == (4, 6, 11) and not (draw.masks & ~completion_mask).any()
    assert torch.equal(draw.weights != 0, draw.masks)
    assert torch.allclose(draw.weights[draw.masks], 1 / draw.ratios[draw.masks] / 4)
    for rows in ([0, 1, 2], [3, 4, 5]):
        both = completion_mask[rows[0]] & completion_mask[rows[1]]
        assert torch.equal(draw.masks[:, rows[0], both], draw.masks[:, rows[1], both])
        assert torch.equal(draw.ratios[:, rows[0]], draw.ratios[:, rows[2]])
    if estimator != "one_step":  # different groups draw different noise
        both = completion_mask[0] & completion_mask[4]
        assert not torch.equal(draw.masks[:, 0, both], draw.masks[:, 4, both])


def test_a_rows_group_draw_is_the_draw_it_would_have_alone():
    """Restricting the group's draw to a row gives the row the same masks as drawing for it alone with the group's
    generator: its distribution, and so its estimate's expectation, is unchanged by sharing."""
    prompt_mask, completion_mask, groups = _groups()
    for estimator in ("coupled", "mc"):
        shared = draw_group_masks(estimator, completion_mask, groups, 2, B,
                                  lambda g: torch.Generator().manual_seed(7 + g), prompt_mask=prompt_mask)
        union = completion_mask[:3].any(0, keepdim=True)
        alone = draw_masks(estimator, union, 2, B, torch.Generator().manual_seed(7), prompt_mask=prompt_mask[:1])
        for row in range(3):
            assert torch.equal(shared.masks[:, row], alone.masks[:, 0] & completion_mask[row])
    coupled = draw_group_masks("coupled", completion_mask, groups, 2, B, lambda g: torch.Generator().manual_seed(g),
                               prompt_mask=prompt_mask)
    assert torch.equal(coupled.masks.sum(0), completion_mask.long())  # each token scored once per pair


def test_group_draw_does_not_depend_on_row_order_or_on_which_rows_are_present():
    prompt_mask, completion_mask, groups = _groups()
    gen = lambda g: torch.Generator().manual_seed(50 + g)  # noqa: E731
    full = draw_group_masks("coupled", completion_mask, groups, 2, B, gen, prompt_mask=prompt_mask)
    perm = torch.tensor([4, 0, 5, 2, 1, 3])
    shuffled = draw_group_masks("coupled", completion_mask[perm], groups[perm], 2, B, gen,
                                prompt_mask=prompt_mask[perm])
    assert torch.equal(shuffled.masks, full.masks[:, perm]) and torch.equal(shuffled.weights, full.weights[:, perm])
    part = draw_group_masks("coupled", completion_mask[2:5], groups[2:5], 2, B, gen, prompt_mask=prompt_mask[2:5])
    assert torch.equal(part.masks, full.masks[:, 2:5])  # a micro-batch that splits a group


def test_group_draw_refuses_what_cannot_be_shared():
    prompt_mask, completion_mask, groups = _groups()
    gen = lambda g: torch.Generator().manual_seed(g)  # noqa: E731
    with pytest.raises(ValueError, match="exact mask counts per row"):
        draw_group_masks("stratified", completion_mask, groups, 2, B, gen, prompt_mask=prompt_mask)
    with pytest.raises(ValueError, match="different prompts"):
        draw_group_masks("coupled", completion_mask, torch.zeros(6, dtype=torch.long), 2, B, gen,
                         prompt_mask=prompt_mask)
