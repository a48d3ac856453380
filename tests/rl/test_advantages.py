import math
import statistics

import pytest
import torch

from rlwork.rl.advantages import (
    batch_moments,
    batch_std,
    compute_advantages,
    dr_grpo_advantages,
    frac_zero_std,
    group_stats,
    grpo_advantages,
    refill_rows,
    reward_metrics,
    rloo_advantages,
    rows_with_signal,
    std_from_moments,
    weight_negatives,
    zero_std_groups,
)

NAN = float("nan")


def t(xs):
    return torch.tensor(xs, dtype=torch.float64)


# ---------------------------------------------------------------- hand-computed cases


def test_grpo_one_correct_of_four():
    # mean 0.25, unbiased std sqrt((0.75^2 + 3 * 0.25^2) / 3) = 0.5
    adv = grpo_advantages(t([1, 0, 0, 0]), 4, eps=0.0)
    torch.testing.assert_close(adv, t([1.5, -0.5, -0.5, -0.5]))


def test_grpo_eps_is_added_to_std():
    adv = grpo_advantages(t([1, 0, 0, 0]), 4, eps=0.5)
    torch.testing.assert_close(adv, t([0.75, -0.25, -0.25, -0.25]))


def test_grpo_two_groups_are_independent():
    adv = grpo_advantages(t([1, 0, 3, 5]), 2, eps=0.0)
    s = 1 / math.sqrt(2)  # r - mean = +-0.5 and +-1; std = sqrt(0.5) and sqrt(2)
    torch.testing.assert_close(adv, t([s, -s, -s, s]))


def test_dr_grpo_is_centred_only():
    torch.testing.assert_close(dr_grpo_advantages(t([1, 0, 0, 0, 2, 4]), 3), t([2 / 3, -1 / 3, -1 / 3, -2, 0, 2]))


def test_rloo_hand_case():
    # baseline for row 0 is mean(0, 0, 0) = 0; for the others mean(1, 0, 0) = 1/3
    torch.testing.assert_close(rloo_advantages(t([1, 0, 0, 0]), 4), t([1, -1 / 3, -1 / 3, -1 / 3]))


def test_batch_scaling_uses_std_of_whole_batch():
    # group means 0.5 and 1 -> centred [0.5, -0.5, 0, 0]; std([1, 0, 1, 1]) = 0.5
    adv = grpo_advantages(t([1, 0, 1, 1]), 2, scale="batch", eps=0.0)
    torch.testing.assert_close(adv, t([1, -1, 0, 0]))


def test_nan_rows_are_excluded_and_get_zero():
    # scorable [1, 0, 0]: mean 1/3, var (4/9 + 1/9 + 1/9) / 2 = 1/3
    adv = grpo_advantages(t([1, NAN, 0, 0]), 4, eps=0.0)
    r3 = math.sqrt(3)
    torch.testing.assert_close(adv, t([2 / 3 * r3, 0, -1 / 3 * r3, -1 / 3 * r3]))
    # leave-one-out over the 3 scorable rows: 1 - 0, 0 - 1/2
    torch.testing.assert_close(rloo_advantages(t([1, NAN, 0, 0]), 4), t([1, 0, -0.5, -0.5]))


@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo", "rloo"])
def test_groups_with_fewer_than_two_scorable_rows_get_zero(estimator):
    rewards = t([NAN, 5, NAN, NAN, NAN, NAN, NAN, NAN, 1, 0, 0, 0])  # one scorable, none, full
    adv = compute_advantages(rewards, 4, estimator=estimator)
    assert torch.equal(adv[:8], torch.zeros(8, dtype=torch.float64))
    assert adv[8] > 0 and (adv[9:] < 0).all()
    assert torch.isfinite(adv).all()


def test_group_stats_conventions():
    mean, std, count = group_stats(t([NAN, 5, NAN, NAN, 1, 3, NAN, NAN]), 4)
    assert mean[0] == 5 and std[0] == 0 and count.tolist() == [1, 2]
    torch.testing.assert_close(mean[1], t(2.0))
    torch.testing.assert_close(std[1], t(math.sqrt(2)))
    mean, std, count = group_stats(t([NAN, NAN]), 2)
    assert torch.isnan(mean).all() and std.item() == 0 and count.item() == 0


def test_batch_std_ignores_nan_and_small_batches():
    torch.testing.assert_close(batch_std(t([1, NAN, 0, 1, 1])), t(0.5))
    assert batch_std(t([NAN, 3])).item() == 0


def test_zero_std_groups_and_fraction():
    rewards = t([1, 1, 1, 1, 0, 0, 1, 0, 1, NAN, NAN, NAN, 2, NAN, 2, NAN])  # equal, signal, one, equal
    assert zero_std_groups(rewards, 4).tolist() == [True, False, True, True]
    assert frac_zero_std(rewards, 4).item() == 0.75
    assert zero_std_groups(t([1.0, 1.05]), 2, atol=0.1).tolist() == [True]


def test_rows_with_signal_keeps_whole_groups_in_order():
    rewards = t([1, 1, 0, 1, 2, 2, NAN, 3, NAN, 3, 0.5, 0.5, 4, 5])
    idx = rows_with_signal(rewards, 2)
    assert idx.tolist() == [2, 3, 12, 13]  # [nan, 3] has one scorable row: no signal
    assert idx.dtype == torch.int64
    assert rows_with_signal(t([1, 1]), 2).numel() == 0


def test_weight_negatives_scales_only_the_negative_advantages():
    adv = grpo_advantages(t([1, 0, 0, 0, NAN, 1, 1, 0]), 4)
    assert torch.equal(weight_negatives(adv, 1.0), adv)
    half = weight_negatives(adv, 0.5)
    assert torch.equal(half[adv >= 0], adv[adv >= 0]) and torch.allclose(half[adv < 0], 0.5 * adv[adv < 0])
    only = weight_negatives(adv, 0.0)
    assert (only >= 0).all() and torch.equal(only[adv > 0], adv[adv > 0]) and (only[adv <= 0] == 0).all()
    with pytest.raises(ValueError, match="weight=1.5"):
        weight_negatives(adv, 1.5)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="multiple of num_generations"):
        grpo_advantages(t([1, 0, 1]), 2)
    with pytest.raises(ValueError, match="1-D"):
        grpo_advantages(t([[1, 0]]), 2)
    with pytest.raises(ValueError, match="dr_grpo"):
        compute_advantages(t([1, 0]), 2, estimator="dr_grpo", scale="group")
    with pytest.raises(ValueError, match="estimator"):
        compute_advantages(t([1, 0]), 2, estimator="ppo")
    with pytest.raises(ValueError, match="scale"):
        compute_advantages(t([1, 0]), 2, scale="global")


def test_default_scales():
    rewards = t([1, 0, 0, 0])
    torch.testing.assert_close(compute_advantages(rewards, 4), grpo_advantages(rewards, 4, scale="group"))
    torch.testing.assert_close(compute_advantages(rewards, 4, "rloo"), rloo_advantages(rewards, 4, scale="none"))
    torch.testing.assert_close(compute_advantages(rewards, 4, "dr_grpo"), t([0.75, -0.25, -0.25, -0.25]))


# ---------------------------------------------------------------- slow, obviously-correct loop


def slow_advantages(rewards, num_generations, estimator, scale, eps):
    rewards = [float(r) for r in rewards]
    scorable_all = [r for r in rewards if not math.isnan(r)]
    out = []
    for start in range(0, len(rewards), num_generations):
        group = rewards[start : start + num_generations]
        scorable = [r for r in group if not math.isnan(r)]
        for i, r in enumerate(group):
            if math.isnan(r) or len(scorable) < 2:
                out.append(0.0)
                continue
            if estimator == "rloo":
                others = [x for j, x in enumerate(group) if j != i and not math.isnan(x)]
                a = r - statistics.fmean(others)
            else:
                a = r - statistics.fmean(scorable)
            if scale == "group":
                a /= statistics.stdev(scorable) + eps
            elif scale == "batch":
                a /= (statistics.stdev(scorable_all) if len(scorable_all) > 1 else 0.0) + eps
            out.append(a)
    return out


@pytest.mark.parametrize(
    "estimator,scale",
    [
        ("grpo", "group"),
        ("grpo", "batch"),
        ("grpo", "none"),
        ("dr_grpo", "none"),
        ("rloo", "none"),
        ("rloo", "group"),
        ("rloo", "batch"),
    ],
)
@pytest.mark.parametrize("seed", range(5))
def test_matches_slow_loop(estimator, scale, seed):
    gen = torch.Generator().manual_seed(seed)
    num_generations = [2, 3, 4, 5, 8][seed]
    rewards = torch.randint(0, 3, (6 * num_generations,), generator=gen).double() * 0.5
    rewards[torch.rand(rewards.shape, generator=gen) < 0.25] = NAN
    fast = compute_advantages(rewards, num_generations, estimator=estimator, scale=scale, eps=1e-3)
    slow = slow_advantages(rewards.tolist(), num_generations, estimator, scale, 1e-3)
    torch.testing.assert_close(fast, t(slow))


def test_advantages_sum_to_zero_per_group_without_nan():
    gen = torch.Generator().manual_seed(0)
    rewards = torch.rand(40, generator=gen, dtype=torch.float64)
    for estimator in ("grpo", "dr_grpo", "rloo"):
        adv = compute_advantages(rewards, 8, estimator=estimator)
        torch.testing.assert_close(adv.view(5, 8).sum(1), torch.zeros(5, dtype=torch.float64))


def test_reward_metrics_hand_case():
    per_func = t([[1, 0.5], [0, NAN], [NAN, NAN], [1, 0.5]])
    rewards = t([1.5, 0, NAN, 1.5])  # the weighted total of per_func, weights 1
    m = reward_metrics(rewards, 2, per_func, ["unit_tests", "format"])
    assert m["reward/mean"].item() == 1.0
    torch.testing.assert_close(m["reward/std"], t(math.sqrt(0.75)))  # devs 0.5, -1, 0.5 -> 1.5 / 2
    assert m["reward/frac_unscorable"].item() == 0.25
    assert m["reward/frac_zero_std"].item() == 0.5  # group 1 has one scorable row
    assert m["reward/unit_tests/mean"].item() == pytest.approx(2 / 3)
    assert m["reward/format/mean"].item() == 0.5
    with pytest.raises(ValueError, match="one name per column"):
        reward_metrics(rewards, 2, per_func, ["unit_tests"])


def test_refill_rows_puts_signal_groups_in_place_of_flat_ones():
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0])  # G=2: flat, signal, flat
    extra = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0, 0.0])  # flat, signal, signal (rows 6..11 of the concat)
    assert refill_rows(rewards, extra, 2).tolist() == [8, 9, 2, 3, 10, 11]
    few = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 1.0])  # one donor only: the second flat group stays
    assert refill_rows(rewards, few, 2).tolist() == [10, 11, 2, 3, 4, 5]


@pytest.mark.parametrize("estimator", ["grpo", "rloo"])
def test_batch_scaling_over_ranks_equals_the_union_batch(estimator):
    # two "ranks" of two groups each; one rank holds an unscorable row and a flat group
    first = t([0.0, 1.0, 1.0, NAN, 0.5, 0.5, 0.5, 0.5])
    second = t([2.0, 0.0, 3.0, 1.0, 0.0, 0.25, 1.0, 0.5])
    union = compute_advantages(torch.cat([first, second]), 4, estimator, "batch")
    moments = batch_moments(first) + batch_moments(second)  # what the all-reduce sums
    assert torch.isclose(std_from_moments(moments), batch_std(torch.cat([first, second])))
    per_rank = [compute_advantages(r, 4, estimator, "batch", batch_scale=std_from_moments(moments))
                for r in (first, second)]
    torch.testing.assert_close(torch.cat(per_rank), union)
    # each rank's own std would not do it
    assert not torch.allclose(torch.cat([compute_advantages(r, 4, estimator, "batch") for r in (first, second)]),
                              union)
    assert std_from_moments(batch_moments(t([1.0, NAN]))) == 0
