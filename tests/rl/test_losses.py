import math

import pytest
import torch

from rlwork.rl.losses import (
    aggregate_loss,
    all_finite,
    clipped_surrogate,
    kl_estimate,
    kl_k1,
    kl_k2,
    kl_k3,
    log_importance_weights,
    policy_loss,
)

NAN = float("nan")


def t(xs, **kw):
    return torch.tensor(xs, dtype=torch.float64, **kw)


MASK = torch.tensor([[True, True, True], [True, False, False]])


# ---------------------------------------------------------------- KL estimators


def test_kl_estimators_hand_values():
    new, ref = t([-1.0]), t([-2.0])  # log r = ref - new = -1
    torch.testing.assert_close(kl_k1(new, ref), t([1.0]))
    torch.testing.assert_close(kl_k2(new, ref), t([0.5]))
    torch.testing.assert_close(kl_k3(new, ref), t([math.exp(-1)]))  # e^-1 - (-1) - 1
    torch.testing.assert_close(kl_estimate(new, ref, "k2"), t([0.5]))


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_zero_when_equal(estimator):
    x = torch.randn(4, 5, dtype=torch.float64)
    assert torch.equal(kl_estimate(x, x.clone(), estimator), torch.zeros_like(x))


def test_kl_exact_expectations_on_enumerated_distribution():
    # Exact expectation over x ~ p of k1 and k3 equals KL(p || q); k2 does not in general.
    p, q = t([0.5, 0.3, 0.2]), t([0.2, 0.2, 0.6])
    exact = (p * (p / q).log()).sum()
    for fn in (kl_k1, kl_k3):
        torch.testing.assert_close((p * fn(p.log(), q.log())).sum(), exact)
    assert not torch.isclose((p * kl_k2(p.log(), q.log())).sum(), exact)


def test_unknown_kl_estimator():
    with pytest.raises(ValueError, match="k3"):
        kl_estimate(t([0.0]), t([0.0]), "k4")


# ---------------------------------------------------------------- ratios and clipping


def test_sequence_level_ratio_uses_elbo_difference_over_length():
    new = t([[-1.0, -1.0, 7.0], [-3.0, NAN, NAN]])  # NaN / junk at padding must be ignored
    old = t([[-2.0, -1.5, 0.0], [-1.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    log_w = log_importance_weights(new, old, mask, "sequence")
    torch.testing.assert_close(log_w, t([[1.5 / 2], [-2.0]]))
    tok = log_importance_weights(new, old, mask, "token")
    torch.testing.assert_close(tok, t([[1.0, 0.5, 0.0], [-2.0, 0.0, 0.0]]))


def test_clipped_surrogate_hand_cases():
    ratio = t([[1.5, 0.5, 0.5, 1.5, 1.25]])
    adv = t([[1.0, 1.0, -1.0, -1.0, 1.0]])
    # A>0, r=1.5 -> clipped to 1.2; A>0, r=0.5 -> min(0.5, 0.8) = 0.5; A<0, r=0.5 -> -min(-0.5,-0.8) = 0.8;
    # A<0, r=1.5 -> -min(-1.5, -1.2) = 1.5; A>0, r=1.25 -> clipped to 1.2 (symmetric eps)
    torch.testing.assert_close(clipped_surrogate(ratio, adv, 0.2), t([[-1.2, -0.5, 0.8, 1.5, -1.2]]))
    # clip-higher: 1.25 < 1 + 0.28 is inside the trust region
    torch.testing.assert_close(clipped_surrogate(ratio, adv, 0.2, 0.28)[0, 4], t(-1.25))


# ---------------------------------------------------------------- aggregation


PTL = t([[1.0, 2.0, 3.0], [4.0, 99.0, NAN]])  # padding values must not leak


def test_aggregation_hand_cases():
    assert aggregate_loss(PTL, MASK, "grpo").item() == pytest.approx((6 / 3 + 4 / 1) / 2)
    assert aggregate_loss(PTL, MASK, "dr_grpo", max_completion_length=4).item() == pytest.approx(10 / 8)
    assert aggregate_loss(PTL, MASK, "dapo").item() == pytest.approx(10 / 4)
    assert aggregate_loss(PTL, MASK, "dapo", num_items_in_batch=8).item() == pytest.approx(10 / 8)


def test_dapo_accumulated_micro_batches_equal_full_batch():
    gen = torch.Generator().manual_seed(0)
    ptl = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    mask = torch.rand(6, 5, generator=gen) < 0.6
    full = aggregate_loss(ptl, mask, "dapo")
    total_tokens = mask.sum()
    parts = sum(
        aggregate_loss(ptl[i : i + 2], mask[i : i + 2], "dapo", num_items_in_batch=total_tokens) for i in (0, 2, 4)
    )
    torch.testing.assert_close(parts, full)


def test_aggregation_errors():
    with pytest.raises(ValueError, match="max_completion_length"):
        aggregate_loss(PTL, MASK, "dr_grpo")
    with pytest.raises(ValueError, match="max_completion_length"):
        aggregate_loss(PTL, MASK, "dr_grpo", max_completion_length=2)
    with pytest.raises(ValueError, match="loss_type"):
        aggregate_loss(PTL, MASK, "bnpo")


# ---------------------------------------------------------------- policy_loss: exact cases


def test_on_policy_ratio_one_and_kl_zero():
    logps = t([[-1.0, -2.0, -0.5], [-3.0, 0.0, 0.0]], requires_grad=True)
    adv = t([2.0, -1.0])
    loss, m = policy_loss(
        logps, logps.detach().clone(), adv, MASK, ref_per_token_logps=logps.detach().clone(), beta=0.1
    )
    # ratio 1 everywhere: loss = mean over rows of -A = -(2 - 1) / 2
    assert loss.item() == pytest.approx(-0.5)
    assert m["policy/kl"].item() == 0
    assert m["policy/ratio_mean"].item() == m["policy/ratio_min"].item() == m["policy/ratio_max"].item() == 1
    assert m["policy/clipfrac"].item() == 0
    loss.backward()
    # d/dlogp of -r A / (len_i N) at r = 1 is -A_i / (len_i N); k3 has zero gradient at new == ref
    torch.testing.assert_close(logps.grad, t([[-1 / 3, -1 / 3, -1 / 3], [0.5, 0.0, 0.0]]))


def test_clipped_tokens_have_zero_gradient_and_are_counted():
    old = torch.zeros(2, 2, dtype=torch.float64)
    new = t([[math.log(1.5), math.log(0.5)], [math.log(0.5), math.log(1.5)]], requires_grad=True)
    adv = t([1.0, -1.0])
    mask = torch.ones(2, 2, dtype=torch.bool)
    loss, m = policy_loss(new, old, adv, mask, epsilon=0.2, loss_type="dapo")
    # per token: [-1.2, -0.5 | 0.8, 1.5] -> sum 0.6 over 4 tokens
    assert loss.item() == pytest.approx(0.6 / 4)
    loss.backward()
    # unclipped tokens: d(-r A)/dlogp = -r A / 4
    torch.testing.assert_close(new.grad, t([[0.0, -0.5 / 4], [0.0, 1.5 / 4]]))
    assert m["policy/clipfrac_high"].item() == 0.25 and m["policy/clipfrac_low"].item() == 0.25
    assert m["policy/clipfrac"].item() == 0.5
    assert m["policy/ratio_min"].item() == pytest.approx(0.5) and m["policy/ratio_max"].item() == pytest.approx(1.5)


def test_sequence_level_on_grpo_is_per_sequence_objective():
    old = t([[-2.0, -1.5, 0.0], [-1.0, 0.0, 0.0]])
    new = t([[-1.9, -1.5, 0.0], [-1.1, 0.0, 0.0]], requires_grad=True)
    adv = t([1.0, -1.0])
    loss, m = policy_loss(new, old, adv, MASK, importance_sampling_level="sequence", epsilon=0.2)
    s = [math.exp(0.1 / 3), math.exp(-0.1)]  # both inside [0.8, 1.2]
    assert loss.item() == pytest.approx((-s[0] + s[1]) / 2)
    assert m["policy/ratio_max"].item() == pytest.approx(s[0])
    loss.backward()
    # row 0: d(-s0)/dlogp_t = -s0 / L_0 for each of its 3 tokens, / N; row 1: +s1 / 1 / N
    g0 = -s[0] / 6
    torch.testing.assert_close(new.grad, t([[g0, g0, g0], [s[1] / 2, 0.0, 0.0]]))


def test_padding_nan_does_not_leak_but_real_nan_does():
    logps = t([[-1.0, -2.0, -0.5], [-3.0, NAN, NAN]], requires_grad=True)  # NaN only at padding
    loss, _ = policy_loss(logps, None, t([1.0, -1.0]), MASK, ref_per_token_logps=logps.detach() - 0.5, beta=0.1)
    loss.backward()
    assert all_finite([loss, logps.grad])
    bad = t([[-1.0, NAN, 0.0], [-3.0, 0.0, 0.0]], requires_grad=True)
    loss, _ = policy_loss(bad, t([[-1.0, -1.0, 0.0], [-3.0, 0.0, 0.0]]), t([1.0, -1.0]), MASK)
    assert not all_finite([loss])


def test_policy_loss_validation():
    logps = torch.zeros(2, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="ref_per_token_logps"):
        policy_loss(logps, None, t([1.0, 0.0]), MASK, beta=0.1)
    with pytest.raises(ValueError, match="advantages"):
        policy_loss(logps, None, t([1.0]), MASK)
    with pytest.raises(ValueError, match="bool"):
        policy_loss(logps, None, t([1.0, 0.0]), MASK.long())
    with pytest.raises(ValueError, match="importance_sampling_level"):
        policy_loss(logps, None, t([1.0, 0.0]), MASK, importance_sampling_level="segment")


# ---------------------------------------------------------------- policy_loss vs a slow loop


def slow_loss(new, old, ref, adv, mask, beta, kl, eps_lo, eps_hi, level, loss_type, max_len):
    n, length = new.shape
    terms = [[None] * length for _ in range(n)]
    for i in range(n):
        real = [j for j in range(length) if mask[i, j]]
        seq_log_w = sum((new[i, j] - old[i, j] for j in real), new.new_zeros(())) / max(len(real), 1)
        for j in real:
            log_w = new[i, j] - old[i, j] if level == "token" else seq_log_w
            r = torch.exp(log_w)
            term = -torch.min(r * adv[i], torch.clamp(r, 1 - eps_lo, 1 + eps_hi) * adv[i])
            d = ref[i, j] - new[i, j]
            k = {"k1": -d, "k2": 0.5 * d**2, "k3": torch.exp(d) - d - 1}[kl]
            terms[i][j] = term + beta * k
    zero = new.new_zeros(())
    if loss_type == "grpo":
        rows = [
            sum((x for x in row if x is not None), zero) / max(sum(x is not None for x in row), 1) for row in terms
        ]
        return sum(rows, zero) / n
    total = sum((x for row in terms for x in row if x is not None), zero)
    if loss_type == "dr_grpo":
        return total / (n * max_len)
    return total / max(int(mask.sum()), 1)


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("kl", ["k1", "k2", "k3"])
def test_loss_and_gradient_match_slow_loop(level, loss_type, kl):
    gen = torch.Generator().manual_seed(sum(map(ord, level + loss_type + kl)))
    n, length = 12, 5
    mask = torch.rand(n, length, generator=gen) < 0.7
    mask[0] = False  # a row without tokens
    old = torch.randn(n, length, generator=gen, dtype=torch.float64) - 2
    new0 = old + 0.8 * torch.randn(n, length, generator=gen, dtype=torch.float64)  # some ratios clip
    ref = old + 0.2 * torch.randn(n, length, generator=gen, dtype=torch.float64)
    new0, old, ref = (torch.where(mask, x, torch.zeros_like(x)) for x in (new0, old, ref))
    adv = torch.randn(n, generator=gen, dtype=torch.float64)
    kw = dict(beta=0.05, eps_lo=0.2, eps_hi=0.28, level=level, loss_type=loss_type, max_len=7)

    new_fast = new0.clone().requires_grad_(True)
    fast, metrics = policy_loss(
        new_fast,
        old,
        adv,
        mask,
        ref_per_token_logps=ref,
        beta=0.05,
        kl_estimator=kl,
        epsilon=0.2,
        epsilon_high=0.28,
        importance_sampling_level=level,
        loss_type=loss_type,
        max_completion_length=7,
    )
    fast.backward()
    new_slow = new0.clone().requires_grad_(True)
    slow = slow_loss(new_slow, old, ref, adv, mask, kl=kl, **kw)
    slow.backward()
    torch.testing.assert_close(fast, slow)
    torch.testing.assert_close(new_fast.grad, new_slow.grad)
    assert metrics["policy/clipfrac"] > 0  # the clipped branch is exercised


# ---------------------------------------------------------------- all_finite


def test_all_finite():
    assert all_finite([torch.ones(3), None, torch.zeros(2, 2)])
    assert all_finite([])
    assert not all_finite([torch.ones(3), torch.tensor([1.0, float("inf")])])
    assert not all_finite([torch.tensor(NAN)])
    model = torch.nn.Linear(2, 1)
    assert all_finite(p.grad for p in model.parameters())  # no grads yet
    model(torch.tensor([[float("inf"), 1.0]])).sum().backward()
    assert not all_finite(p.grad for p in model.parameters())
