"""ELBO estimators on the tiny coders: one-forward vs reference loops, determinism, exact enumeration, variance."""

import dataclasses

import pytest
import torch

from rlwork.diffusion.elbo import block_elbo_loop, doubled_inputs, elbo
from rlwork.diffusion.masking import ESTIMATORS, draw_group_masks, draw_masks
from rlwork.models.lm import DiffusionLM, load_diffusion_lm


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
    assert torch.allclose(fast.entropy, slow.entropy, atol=1e-5)  # the same masked positions, the same predictions


def test_entropy_is_the_mean_entropy_at_the_masked_positions(bidir_lm):
    """By hand: one forward of [prompt, noisy completion], entropy of softmax at each masked real token, averaged."""
    prompt_ids, prompt_mask, completion_ids, completion_mask = batch(bidir_lm, *RAGGED)
    draw = draw_masks("mc", completion_mask, 1, None, 3)
    with torch.no_grad():
        out = elbo(bidir_lm, prompt_ids, prompt_mask, completion_ids, completion_mask, draw)
        noisy = completion_ids.masked_fill(draw.masks[0], bidir_lm.mask_id)
        logits, _ = bidir_lm.forward(torch.cat([prompt_ids, noisy], 1), torch.cat([prompt_mask, completion_mask], 1))
    probs = logits[:, -completion_ids.shape[1]:].double().softmax(-1)  # [N, L, V]
    per_position = -(probs * probs.log()).sum(-1)
    masked = draw.masks[0] & completion_mask
    assert masked.sum() > 3
    assert out.entropy.item() == pytest.approx(per_position[masked].mean().item(), rel=1e-5)


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


# ---------------------------------------------------------------------------------------------------------------
# Exact enumeration: every mask subset of a short completion scored once, then each estimator's expectation over
# masks (enumeration) and t (Gauss-Legendre quadrature, exact here: the integrands are polynomials of degree < 16)


def subset_table(lm, prompt_len, length):
    """T[code, l] = log p(x_l | noisy completion with mask set `code`) for every subset; the problem's tensors."""
    prompt_ids, prompt_mask, completion_ids, completion_mask = batch(lm, [prompt_len], [length], p=prompt_len,
                                                                     length=length, seed=3)
    codes = torch.arange(2**length)
    masks = (codes[:, None] >> torch.arange(length)) & 1 == 1  # [2^L, L]
    rows = lambda x: x.expand(2**length, -1)
    draw = draw_masks("one_step", rows(completion_mask), 1, lm.block_size, 0, prompt_mask=rows(prompt_mask))
    draw = dataclasses.replace(draw, estimator="custom", masks=masks[None], weights=masks[None].float())
    with torch.no_grad():
        table = elbo(lm, rows(prompt_ids), rows(prompt_mask), rows(completion_ids), rows(completion_mask), draw)
    return table.per_token.double(), prompt_mask, completion_mask


def lookup(table, draw):
    """Each row's estimate for `draw`, read from the table instead of running the model: [N]."""
    codes = (draw.masks.long() << torch.arange(draw.masks.shape[-1])).sum(-1)  # [S, N]
    return (draw.weights.double() * table[codes]).sum((0, 2))


def block_values(table, cols):
    """f(A) = sum_{l in A} log p(x_l | A masked) for subsets A of one block (columns `cols`), keyed by local bits."""
    out = {}
    for local in range(2 ** len(cols)):
        members = [c for i, c in enumerate(cols) if local >> i & 1]
        out[local] = float(table[sum(1 << c for c in members), members].sum()) if members else 0.0
    return out


def exact_block(estimator, f, n, *, schedule="linear", block_size=4, eps=1e-3, t_range=(0.2, 0.8), force=False):
    """Exact expectation of one block's term: sum over subsets A of P(A) * estimate(A), integrated over t."""
    import numpy as np

    full = 2**n - 1
    size = {a: bin(a).count("1") for a in range(2**n)}
    nodes, gl_weights = np.polynomial.legendre.leggauss(16)

    def integral(g, low, high):
        x = (high - low) / 2 * nodes + (high + low) / 2
        return (high - low) / 2 * sum(w * g(u) for u, w in zip(x, gl_weights, strict=True))

    def binom(a, u):
        return u ** size[a] * (1 - u) ** (n - size[a])

    def avg(k, complement=False):
        subsets = [a for a in range(2**n) if size[a] == k]
        return sum(f[full ^ a if complement else a] for a in subsets) / len(subsets)

    if estimator == "one_step":
        return f[full]
    if estimator == "elbo":
        return sum(avg(k) / k for k in range(1, n + 1))
    if estimator == "stratified":
        return sum(((n + 1) / x * avg(x) if x else 0.0) + ((n + 1) / (n - x) * avg(x, True) if x < n else 0.0)
                   for x in range(n + 1)) / (2 * (n + 1))
    if estimator == "coupled":
        low, high = t_range
        g = lambda t: sum(binom(a, t) * (f[a] / (2 * t) + f[full ^ a] / (2 * (1 - t))) for a in range(2**n))
        return integral(g, low, high) / (high - low)
    if schedule == "linear":
        g = lambda u: sum(binom(a, u) * f[a] / u for a in range(1, 2**n))
        return integral(g, eps, 1.0) / (1 - eps)
    forced = lambda u: (1 - u) ** n / n if force else 0.0  # the fallback picks one of the n tokens uniformly
    g = lambda u: sum((binom(a, u) + (forced(u) if size[a] == 1 else 0.0)) * f[a] / u for a in range(1, 2**n))
    return g(1 / block_size) / block_size + integral(g, 1 / block_size, 1.0)


CASES = {  # model -> (prompt length, completion length, completion blocks as column lists)
    "block": (5, 7, [[0, 1, 2], [3, 4, 5, 6]]),  # prompt 5 = one block + 1: completion blocks of 3 and 4 tokens
    "bidir": (4, 6, [[0, 1, 2, 3, 4, 5]]),
}


@pytest.fixture(scope="module")
def tables(block_lm, bidir_lm):
    return {name: subset_table(lm, *CASES[name][:2]) for name, lm in (("block", block_lm), ("bidir", bidir_lm))}


def exact(name, table, estimator, **kwargs):
    return sum(exact_block(estimator, block_values(table, cols), len(cols), **kwargs) for cols in CASES[name][2])


@pytest.mark.parametrize("name", ["block", "bidir"])
def test_exact_formulas_agree_on_the_elbo(tables, name):
    """Three independent routes to the true ELBO: exact counts (stratified), t-integral (mc, eps=0), (0, 1) pairs."""
    table = tables[name][0]
    truth = exact(name, table, "elbo")
    assert exact(name, table, "stratified") == pytest.approx(truth, rel=1e-10)
    assert exact(name, table, "mc", schedule="linear", eps=0.0) == pytest.approx(truth, rel=1e-10)
    assert exact(name, table, "coupled", t_range=(0.0, 1.0)) == pytest.approx(truth, rel=1e-10)
    assert exact(name, table, "one_step") != pytest.approx(truth, rel=1e-3)  # d1's estimate is biased


SETTINGS = [  # (model, estimator, draw kwargs)
    ("block", "mc", {"schedule": "clipped"}),
    ("block", "mc", {"schedule": "clipped", "force_mask": True}),
    ("block", "mc", {"schedule": "linear", "eps": 0.05}),
    ("block", "coupled", {}),
    ("block", "stratified", {}),
    ("bidir", "mc", {"eps": 0.05}),
    ("bidir", "coupled", {"t_range": (0.05, 0.95)}),
    ("bidir", "stratified", {}),
    ("bidir", "one_step", {}),
]


@pytest.mark.parametrize(("name", "estimator", "kwargs"), SETTINGS)
def test_estimator_mean_matches_exact_expectation(block_lm, bidir_lm, tables, name, estimator, kwargs):
    """Mean over 20k independent draws within 4 standard errors of the enumerated expectation."""
    lm = block_lm if name == "block" else bidir_lm
    table, prompt_mask, completion_mask = tables[name]
    rows = 20_000
    draw = draw_masks(estimator, completion_mask.expand(rows, -1), 2, lm.block_size, 1234,
                      prompt_mask=prompt_mask.expand(rows, -1), **kwargs)
    estimates = lookup(table, draw)  # [rows]
    schedule = {"schedule": kwargs.get("schedule", "linear"), "force": kwargs.get("force_mask", False)}
    expected = exact(name, table, estimator, **schedule, **{k: v for k, v in kwargs.items()
                                                            if k in ("eps", "t_range")})
    stderr = estimates.std().item() / rows**0.5
    assert abs(estimates.mean().item() - expected) <= 4 * stderr + 1e-9, (estimates.mean().item(), expected, stderr)


@pytest.mark.parametrize("name", ["block", "bidir"])
def test_lookup_matches_model_runs(block_lm, bidir_lm, tables, name):
    """The table stands for the model: elbo() on fresh draws returns exactly the looked-up estimates."""
    lm = block_lm if name == "block" else bidir_lm
    table, prompt_mask, completion_mask = tables[name]
    prompt_ids, _, completion_ids, _ = batch(lm, [prompt_mask.shape[1]], [completion_mask.shape[1]],
                                             p=prompt_mask.shape[1], length=completion_mask.shape[1], seed=3)
    rows = lambda x: x.expand(8, -1)
    for estimator in ESTIMATORS:
        draw = draw_masks(estimator, rows(completion_mask), 2, lm.block_size, 5, prompt_mask=rows(prompt_mask))
        with torch.no_grad():
            out = elbo(lm, rows(prompt_ids), rows(prompt_mask), rows(completion_ids), rows(completion_mask), draw)
        assert torch.allclose(out.sequence.double(), lookup(table, draw), atol=1e-4)


@pytest.mark.parametrize("name", ["block", "bidir"])
@pytest.mark.parametrize("forwards", [2, 4])
def test_paired_estimators_beat_mc_at_equal_forwards(block_lm, bidir_lm, tables, name, forwards):
    lm = block_lm if name == "block" else bidir_lm
    table, prompt_mask, completion_mask = tables[name]
    rows = 20_000
    variance = {}
    for estimator in ("mc", "coupled", "stratified"):
        draw = draw_masks(estimator, completion_mask.expand(rows, -1), forwards, lm.block_size, 99,
                          prompt_mask=prompt_mask.expand(rows, -1))
        variance[estimator] = lookup(table, draw).var().item()
    # measured (20k draws): block-causal mc 224 / 112 at 2 / 4 forwards, coupled 49 / 25, stratified 114 / 11;
    # with one pair stratification has nothing to stratify, from two pairs on it wins
    assert variance["coupled"] < variance["mc"] and variance["stratified"] < variance["mc"], variance
    assert min(variance["coupled"], variance["stratified"]) <= 0.5 * variance["mc"], variance


def test_shared_group_masks_cancel_what_two_completions_share(block_lm):
    """Two completions of one prompt that differ in one token: the group gradient weighs their ELBO difference.
    With independent masks its estimate is dominated by the masks' noise on the 15 tokens they share; with the
    group's masks shared (`draw_group_masks`) those terms cancel up to the changed context. Both estimate the same
    difference."""
    prompt_ids, prompt_mask, completion_ids, completion_mask = batch(block_lm, [8, 8], [16, 16], length=16, seed=4)
    prompt_ids[1], completion_ids[1] = prompt_ids[0], completion_ids[0]
    completion_ids[1, 9] = completion_ids[0, 9] + 7
    groups = torch.zeros(2, dtype=torch.long)
    diffs: dict[str, list[float]] = {"independent": [], "shared": []}
    with torch.no_grad():
        for s in range(48):
            for name, draw in (
                ("independent", draw_masks("coupled", completion_mask, 2, 4, s, prompt_mask=prompt_mask)),
                ("shared", draw_group_masks("coupled", completion_mask, groups, 2, 4,
                                            lambda _, s=s: torch.Generator().manual_seed(s), prompt_mask=prompt_mask)),
            ):
                seq = elbo(block_lm, prompt_ids, prompt_mask, completion_ids, completion_mask, draw).sequence
                diffs[name].append(float(seq[0] - seq[1]))
    ind, shared = torch.tensor(diffs["independent"]), torch.tensor(diffs["shared"])
    assert shared.std() < 0.1 * ind.std(), (shared.std(), ind.std())
    se = (ind.var() / len(ind) + shared.var() / len(shared)).sqrt()
    assert (ind.mean() - shared.mean()).abs() < 3 * se  # the same expected difference
