"""Phase 4: old/reference ELBO terms under the step's shared mask draws, and trace terms (tiny coder, torch engine)."""

import torch

from rlwork.diffusion.rollout import generate_rollouts
from rlwork.rl.likelihoods import (
    draw_masks_for,
    draw_step_masks,
    elbo_of_rows,
    likelihood_of_rows,
    old_and_ref_logps,
)
from rlwork.rl.trainer import setup
from tests.rl.conftest import tiny_cfg


def two_groups_of_four(session):
    """8 rows: 4 completions of each of the stream's next 2 prompts, sampled from the session's policy."""
    batch = session.stream.next(2)
    return generate_rollouts(session.lm, batch.problems, batch.texts, 4, session.cfg.sampler,
                             torch.Generator().manual_seed(0), 8, model=session.engine.module)


def test_ratio_is_one_and_kl_zero_before_the_first_update(tmp_path, reward_module):
    cfg = tiny_cfg(tmp_path, "algo.num_iterations=2", "algo.beta=0.04", "train.micro_batch_size=8")
    session = setup(cfg)
    try:
        rollout = two_groups_of_four(session)
        draw = draw_masks_for(cfg.algo, session.lm, rollout, torch.Generator().manual_seed(1))
        old, ref = old_and_ref_logps(cfg.algo, cfg.sampler, session.lm, session.engine, session.ref_policy, rollout,
                                     [[draw]], 8)
        current = elbo_of_rows(session.lm, rollout, torch.arange(8), draw, 0, session.engine.module).per_token
    finally:
        session.close()
    assert torch.equal(current.detach(), old[0])  # ratio exp(0) = 1 exactly: same weights, same draw
    assert torch.equal(current.detach(), ref[0])  # fresh LoRA (B = 0): adapter-disabled base is the policy
    assert current.requires_grad


def test_reference_terms_skip_rows_without_signal(tmp_path, reward_module):
    cfg = tiny_cfg(tmp_path, "algo.num_iterations=2", "algo.beta=0.04", "train.micro_batch_size=4")
    session = setup(cfg)
    try:
        rollout = two_groups_of_four(session)
        draws = [[draw_masks_for(cfg.algo, session.lm, rollout.select(torch.arange(s, s + 4)),
                                 torch.Generator().manual_seed(s)) for s in (0, 4)]]
        needed = torch.tensor([True, False, True, True, False, False, False, False])
        full = old_and_ref_logps(cfg.algo, cfg.sampler, session.lm, session.engine, session.ref_policy, rollout,
                                 draws, 4)
        part = old_and_ref_logps(cfg.algo, cfg.sampler, session.lm, session.engine, session.ref_policy, rollout,
                                 draws, 4, needed)
    finally:
        session.close()
    for f, p in zip(full, part, strict=True):
        torch.testing.assert_close(p[0][needed], f[0][needed])  # same terms where the loss needs them
        assert not p[0][~needed].any()
    assert full[1][0][~needed].abs().sum() > 0  # the skipped rows do have terms: the test can tell


def test_step_draws_are_keyed_by_global_row(tmp_path, reward_module):
    """A micro-batch's masks depend on its first global row, not on how many rows came before it on this rank: the
    second micro-batch of a rank starting at row 0 equals the first of a rank starting at row 4."""
    cfg = tiny_cfg(tmp_path, "train.micro_batch_size=4")
    session = setup(cfg)
    try:
        rollout = two_groups_of_four(session)
        whole = draw_step_masks(cfg.algo, session.lm, rollout, 4, cfg.seed, 3, first_row=0)
        upper = draw_step_masks(cfg.algo, session.lm, rollout.select(torch.arange(4, 8)), 4, cfg.seed, 3, first_row=4)
        other_step = draw_step_masks(cfg.algo, session.lm, rollout, 4, cfg.seed, 4, first_row=0)
    finally:
        session.close()
    assert len(whole) == 1 and len(whole[0]) == 2
    assert torch.equal(whole[0][1].masks, upper[0][0].masks)
    assert not torch.equal(whole[0][0].masks, other_step[0][0].masks)


def test_shared_group_draws_do_not_depend_on_micro_batches_or_ranks(tmp_path, reward_module):
    """algo.group_masks=shared: a group's completions mask the same positions; the draw is keyed by the global row
    that opens the group, so micro-batches of 2 or 8 rows, and a second rank holding the second group, agree."""
    cfg = tiny_cfg(tmp_path, "algo.group_masks=shared")
    session = setup(cfg)
    try:
        rollout = two_groups_of_four(session)
        whole = draw_step_masks(cfg.algo, session.lm, rollout, 8, cfg.seed, 3, first_row=0)[0]
        pieces = draw_step_masks(cfg.algo, session.lm, rollout, 2, cfg.seed, 3, first_row=0)[0]
        upper = draw_step_masks(cfg.algo, session.lm, rollout.select(torch.arange(4, 8)), 4, cfg.seed, 3,
                                first_row=4)[0]
        independent = draw_step_masks(tiny_cfg(tmp_path).algo, session.lm, rollout, 8, cfg.seed, 3, first_row=0)[0]
    finally:
        session.close()
    masks = whole[0].masks
    assert torch.equal(torch.cat([d.masks for d in pieces], 1), masks)
    assert torch.equal(upper[0].masks, masks[:, 4:])
    for rows in (range(0, 4), range(4, 8)):
        common = rollout.completion_mask[list(rows)].all(0)
        assert all(torch.equal(masks[:, r, common], masks[:, rows[0], common]) for r in rows)
    common = rollout.completion_mask[:4].all(0)
    assert not all(torch.equal(independent[0].masks[:, r, common], independent[0].masks[:, 0, common])
                   for r in range(4))  # independent draws differ: the test can tell


def test_trace_old_terms_are_the_rollouts_and_equal_a_recomputation(tmp_path, reward_module):
    cfg = tiny_cfg(tmp_path, "algo.preset=trace_grpo", "train.micro_batch_size=8")
    session = setup(cfg)
    try:
        rollout = two_groups_of_four(session)
        draws = draw_step_masks(cfg.algo, session.lm, rollout, 8, cfg.seed, 0, first_row=0)
        old, ref = old_and_ref_logps(cfg.algo, cfg.sampler, session.lm, session.engine, session.ref_policy, rollout,
                                     draws, 8)
        current = likelihood_of_rows(cfg.algo, cfg.sampler, session.lm, rollout, torch.arange(8), None, 0,
                                     session.engine.module).per_token
    finally:
        session.close()
    assert draws == [[None]] and old[0] is rollout.sampling_per_token_logps  # no draws, no old forward
    assert (current.detach() - old[0]).abs().max() <= 1e-4  # the first ratio is 1
    assert torch.equal(current.detach(), ref[0])  # fresh LoRA (B = 0): adapter-disabled base is the policy
    assert current.requires_grad and (current[rollout.completion_mask] < 0).all()
