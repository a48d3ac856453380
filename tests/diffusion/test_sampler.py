"""The batched sampler against the naive reference (token for token), decode order, seeds, every family.

EOS is forced without training: swapping the lm_head rows of EOS and a token t that the plain model generates
makes the tweaked model propose EOS exactly where it would have proposed t (and t where it would have proposed
EOS), with identical confidences. Which t: the first, among the plain model's most frequent outputs, that ends
some rows early in the middle of a block and leaves others running.
"""

import copy
import dataclasses

import pytest
import torch

from rlwork.diffusion.sampler import SamplerConfig, filter_logits, generate, propose
from rlwork.diffusion.sampler_ref import naive_generate
from rlwork.models.lm import DiffusionLM

LENGTHS = [5, 8, 11, 14, 3, 6]  # prompt lengths mod 4: 1, 0, 3, 2, 3, 2
EOS_LENGTHS = [5, 8, 11, 14, 3, 6, 9, 13]


def ragged(lm: DiffusionLM, lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded random prompts of the given lengths: (ids [N, P], mask [N, P])."""
    g = torch.Generator().manual_seed(seed)
    p = max(lengths)
    ids = torch.full((len(lengths), p), lm.pad_id, dtype=torch.long)
    mask = torch.zeros(len(lengths), p, dtype=torch.bool)
    for i, n in enumerate(lengths):
        ids[i, p - n:] = torch.randint(10, 1000, (n,), generator=g)
        mask[i, p - n:] = True
    return ids, mask


def assert_same(a, b) -> None:
    """Same tokens, masks, decode order, per-row step counts and trajectories (num_forwards may differ); the same
    behaviour log-probs up to float noise (different forwards compute the logits)."""
    torch.testing.assert_close(a.completion_ids, b.completion_ids, rtol=0, atol=0)
    torch.testing.assert_close(a.completion_mask, b.completion_mask, rtol=0, atol=0)
    torch.testing.assert_close(a.decode_step, b.decode_step, rtol=0, atol=0)
    torch.testing.assert_close(a.row_steps, b.row_steps, rtol=0, atol=0)
    torch.testing.assert_close(a.trace_ids, b.trace_ids, rtol=0, atol=0)
    torch.testing.assert_close(a.trace_step, b.trace_step, rtol=0, atol=0)
    torch.testing.assert_close(a.sampling_per_token_logps, b.sampling_per_token_logps, rtol=0, atol=1e-4)


def shifted(lm: DiffusionLM) -> DiffusionLM:
    return DiffusionLM(lm.model, lm.tokenizer, dataclasses.replace(lm.family, shift_logits=True))


def blocks_of(prompt_len: int, length: int, block: int, aligned: bool) -> list[list[int]]:
    """Completion positions of each block, written out independently of both samplers."""
    out: dict[int, list[int]] = {}
    for j in range(length):
        out.setdefault(((prompt_len if aligned else 0) + j) // block, []).append(j)
    return list(out.values())


class Recorder(torch.nn.Module):
    """Passed as `model=`: records each forward's input shape, then runs the wrapped model."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.inner = model
        self.shapes: list[tuple[int, int]] = []

    def forward(self, input_ids, **kwargs):
        self.shapes.append(tuple(input_ids.shape))
        return self.inner(input_ids=input_ids, **kwargs)


@pytest.fixture(scope="module")
def eos_case(tiny_lm):
    """(tweaked lm, ids, mask, config) where EOS ends some rows mid-block and others run to the end."""
    ids, mask = ragged(tiny_lm, EOS_LENGTHS, seed=0)
    config = SamplerConfig(temperature=0.0, max_new_tokens=24, steps_per_block=2)
    plain = generate(tiny_lm, ids, mask, config)
    tokens, counts = plain.completion_ids.unique(return_counts=True)
    for t in tokens[counts.argsort(descending=True, stable=True)][:12].tolist():
        model = copy.deepcopy(tiny_lm.model)
        weight = model.lm_head.weight.data
        weight[[tiny_lm.eos_id, t]] = weight[[t, tiny_lm.eos_id]]
        lm = DiffusionLM(model, tiny_lm.tokenizer, tiny_lm.family)
        out = generate(lm, ids, mask, config)
        lengths = out.completion_mask.sum(1)
        mid_block = [(p + n - 1) % 4 != 3 for p, n in zip(EOS_LENGTHS, lengths.tolist(), strict=True) if n < 24]
        if any(mid_block) and (lengths == 24).any():
            return lm, ids, mask, config
    pytest.fail("no lm_head swap produced an early, mid-block EOS: the tiny model changed; revisit the trick")


# ---------------------------------------------------------------------------------------------------------------
# Identity with the naive reference


@pytest.mark.parametrize(
    "steps, remasking, threshold",
    [(4, "low_confidence", None), (2, "low_confidence", None), (1, "margin", None), (3, "entropy", None),
     (4, "low_confidence", 0.002), (4, "left_to_right", None)],
)
def test_block_causal_cached_matches_naive_on_ragged_batch(tiny_lm, steps, remasking, threshold):
    ids, mask = ragged(tiny_lm, LENGTHS)
    config = SamplerConfig(temperature=0.0, max_new_tokens=14, steps_per_block=steps, remasking=remasking,
                           threshold=threshold)
    ref = naive_generate(tiny_lm, ids, mask, config)
    cached = generate(tiny_lm, ids, mask, config)
    uncached = generate(tiny_lm, ids, mask, dataclasses.replace(config, use_cache=False))
    assert_same(cached, ref)
    assert_same(uncached, ref)
    assert cached.completion_mask.all()  # no EOS here: that case has its own test
    assert cached.num_forwards < ref.num_forwards / 3


def test_eos_stops_rows_identically_to_naive(eos_case):
    lm, ids, mask, config = eos_case
    ref = naive_generate(lm, ids, mask, config)
    out = generate(lm, ids, mask, config)
    assert_same(out, ref)
    for row, n in zip(out.completion_ids, out.completion_mask.sum(1).tolist(), strict=True):
        assert (row[:n - 1] != lm.eos_id).all()
        assert n == 24 or row[n - 1] == lm.eos_id  # the first EOS is the last real token
        assert (row[n:] == lm.pad_id).all()
        assert lm.mask_id not in row.tolist()


def test_finished_rows_leave_the_batch_and_prefix_is_computed_once(eos_case):
    lm, ids, mask, config = eos_case
    recorder = Recorder(lm.model)
    out = generate(lm, ids, mask, config, model=recorder)
    assert_same(out, generate(lm, ids, mask, config))
    rows = [n for n, _ in recorder.shapes]
    assert rows[0] == len(EOS_LENGTHS) and rows[-1] < rows[0]
    assert rows == sorted(rows, reverse=True)
    assert rows[-1] == int((out.completion_mask.sum(1) == 24).sum())  # only rows still running
    # after the fused prefill, a forward is at most [last committed block, current block]
    assert all(t <= 2 * lm.block_size for _, t in recorder.shapes[1:])
    assert len(recorder.shapes) == out.num_forwards


def test_shifted_block_causal_cached_matches_naive(tiny_lm):
    lm = shifted(tiny_lm)
    ids, mask = ragged(lm, LENGTHS, seed=1)
    config = SamplerConfig(temperature=0.0, max_new_tokens=12, steps_per_block=2)
    assert_same(generate(lm, ids, mask, config), naive_generate(lm, ids, mask, config))


@pytest.mark.parametrize("shift", [False, True])
def test_bidirectional_exact_mode_matches_naive(tiny_bidir_lm, shift):
    lm = shifted(tiny_bidir_lm) if shift else tiny_bidir_lm
    ids, mask = ragged(lm, LENGTHS, seed=2)
    config = SamplerConfig(temperature=0.0, max_new_tokens=12, steps_per_block=3, block_size=5, use_cache=False)
    assert_same(generate(lm, ids, mask, config), naive_generate(lm, ids, mask, config))


@pytest.mark.parametrize("shift", [False, True])
def test_bidirectional_prefix_cache(tiny_bidir_lm, shift):
    """Approximate in general; exact when each block has one step (that step recomputes everything)."""
    lm = shifted(tiny_bidir_lm) if shift else tiny_bidir_lm
    ids, mask = ragged(lm, LENGTHS, seed=3)
    one = SamplerConfig(temperature=0.0, max_new_tokens=12, steps_per_block=1, block_size=4)
    assert_same(generate(lm, ids, mask, one), generate(lm, ids, mask, dataclasses.replace(one, use_cache=False)))
    recorder = Recorder(lm.model)
    config = SamplerConfig(temperature=0.0, max_new_tokens=12, steps_per_block=3, block_size=6)
    out = generate(lm, ids, mask, config, model=recorder)
    width = ids.shape[1] + 12
    assert [t for _, t in recorder.shapes] == [width, 12 + shift, 12 + shift, width, 6 + shift, 6 + shift]
    assert out.completion_mask.all() and (out.row_steps == 6).all()
    for steps in out.decode_step:
        assert torch.bincount(steps, minlength=6).tolist() == [2] * 6


# ---------------------------------------------------------------------------------------------------------------
# Decode order and parallel decoding


@pytest.mark.parametrize("steps", [4, 2, 3])
def test_decode_order_follows_the_schedule(tiny_lm, steps):
    ids, mask = ragged(tiny_lm, LENGTHS, seed=4)
    out = generate(tiny_lm, ids, mask, SamplerConfig(temperature=0.0, max_new_tokens=14, steps_per_block=steps))
    for p, order in zip(LENGTHS, out.decode_step, strict=True):
        expected, previous_last = [], -1
        for positions in blocks_of(p, 14, 4, aligned=True):
            m = len(positions)
            expected += [c for c in (m // steps + (j < m % steps) for j in range(steps)) if c > 0]
            block_steps = order[positions]
            assert block_steps.min() == previous_last + 1  # blocks are decoded strictly left to right
            previous_last = int(block_steps.max())
        assert (order >= 0).all()
        assert torch.bincount(order).tolist() == expected


def test_left_to_right_commits_each_block_in_reading_order(tiny_lm):
    ids, mask = ragged(tiny_lm, LENGTHS, seed=4)
    out = generate(tiny_lm, ids, mask, SamplerConfig(temperature=0.0, max_new_tokens=14, steps_per_block=4,
                                                     remasking="left_to_right"))
    for p, order in zip(LENGTHS, out.decode_step, strict=True):
        steps = torch.cat([order[positions] for positions in blocks_of(p, 14, 4, aligned=True)])
        assert steps.tolist() == list(range(steps.numel()))  # one token per step, leftmost first


def test_threshold_decoding_commits_in_parallel(tiny_lm):
    ids, mask = ragged(tiny_lm, LENGTHS, seed=5)
    base = SamplerConfig(temperature=0.0, max_new_tokens=16, steps_per_block=4)
    scheduled = generate(tiny_lm, ids, mask, base)
    # threshold 1: nothing but the scheduled tokens passes, so decoding is unchanged
    assert_same(generate(tiny_lm, ids, mask, dataclasses.replace(base, threshold=1.0)), scheduled)
    # threshold 0: every masked token passes, so each block takes a single step
    every = generate(tiny_lm, ids, mask, dataclasses.replace(base, threshold=0.0))
    for p, steps, n in zip(LENGTHS, every.decode_step, every.row_steps.tolist(), strict=True):
        blocks = blocks_of(p, 16, 4, aligned=True)
        assert n == len(blocks)
        assert all((steps[positions] == b).all() for b, positions in enumerate(blocks))
    middle = generate(tiny_lm, ids, mask, dataclasses.replace(base, threshold=0.002))
    per_step = [torch.bincount(s) for s in middle.decode_step]
    assert all((c >= 1).all() for c in per_step)  # at least one token per step
    assert any((c > 1).any() for c in per_step)  # and sometimes more
    assert middle.num_forwards < scheduled.num_forwards


# ---------------------------------------------------------------------------------------------------------------
# Randomness and the per-token maths


def test_same_seed_same_samples_different_seed_differs(tiny_lm):
    ids, mask = ragged(tiny_lm, LENGTHS, seed=6)
    config = SamplerConfig(max_new_tokens=12, steps_per_block=2, temperature=1.0, top_k=200, top_p=0.95)

    def sample(seed: int, cfg: SamplerConfig = config):
        return generate(tiny_lm, ids, mask, cfg, generator=torch.Generator().manual_seed(seed))

    assert_same(sample(0), sample(0))
    assert not torch.equal(sample(0).completion_ids, sample(1).completion_ids)
    random_order = dataclasses.replace(config, temperature=0.0, remasking="random")
    assert_same(sample(3, random_order), sample(3, random_order))
    assert not torch.equal(sample(3, random_order).decode_step, sample(4, random_order).decode_step)


def test_filter_logits_known_answers():
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64).log()
    kept = lambda **kw: torch.isfinite(filter_logits(logits, **kw)).tolist()  # noqa: E731
    assert kept(top_k=2, top_p=None) == [True, True, False, False]
    assert kept(top_k=None, top_p=0.4) == [True, False, False, False]
    assert kept(top_k=None, top_p=0.6) == [True, True, False, False]
    assert kept(top_k=None, top_p=0.85) == [True, True, True, False]
    assert kept(top_k=None, top_p=1.0) == [True] * 4


def test_propose_greedy_never_picks_mask_and_gumbel_matches_softmax():
    logits = torch.tensor([[2.0, 0.0, 1.0, 3.0]])  # token 3 plays the mask
    x0, conf, logp = propose(logits, SamplerConfig(temperature=0.0), mask_id=3, generator=None)
    assert x0.tolist() == [0]
    torch.testing.assert_close(conf, torch.softmax(logits[:, :3].double(), -1)[:, 0])
    torch.testing.assert_close(logp, torch.log_softmax(logits[:, :3].double(), -1)[:, 0])  # greedy: the model's own
    draws = logits.expand(40_000, 4)
    x0, _, _ = propose(draws, SamplerConfig(temperature=1.0), mask_id=3, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(x0, minlength=4).double() / x0.numel()
    torch.testing.assert_close(freq[:3], torch.softmax(logits[0, :3].double(), -1), atol=0.01, rtol=0)
    assert freq[3] == 0


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, None, None), (0.5, None, None), (1.0, 2, None),
                                                      (2.0, None, 0.7)])
def test_recorded_logp_is_the_distribution_drawn_from(temperature, top_k, top_p):
    """exp(logp) of each drawn token equals its frequency among the draws (the mask token, id 4, never drawn)."""
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05, 0.2]).log().expand(40_000, 5)
    config = SamplerConfig(temperature=temperature, top_k=top_k, top_p=top_p)
    x0, _, logp = propose(logits, config, mask_id=4, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(x0, minlength=5).double() / x0.numel()
    prob = torch.zeros(5, dtype=torch.float64).index_put_((x0,), logp.exp())  # each token's recorded probability
    torch.testing.assert_close(freq, prob, atol=0.01, rtol=0)
    assert freq[4] == 0 and torch.isclose(prob.sum(), torch.tensor(1.0, dtype=torch.float64))


def test_invalid_settings_say_how_to_fix(tiny_lm):
    ids, mask = ragged(tiny_lm, [4])
    with pytest.raises(ValueError, match="sampler.block_size=null or 4"):
        generate(tiny_lm, ids, mask, SamplerConfig(temperature=0.0, max_new_tokens=8, block_size=8))
    with pytest.raises(ValueError, match="generator"):
        generate(tiny_lm, ids, mask, SamplerConfig(max_new_tokens=8, temperature=0.7))
    with pytest.raises(ValueError, match="remasking='low_confidence'"):
        SamplerConfig(temperature=0.0, remasking="entropy", threshold=0.9)
    with pytest.raises(ValueError, match="remasking="):
        SamplerConfig(temperature=0.0, remasking="lowest")


def test_eos_inside_the_prompts_last_block_does_not_end_the_row(tiny_lm):
    """Stable-DiffCoder issue #1: an EOS among the prompt tokens of the first generated block is not a stop."""
    lengths = [6, 7, 9]  # the last prompt token sits in the block that generation completes
    ids, mask = ragged(tiny_lm, lengths, seed=7)
    ids[:, -1] = tiny_lm.eos_id
    config = SamplerConfig(temperature=0.0, max_new_tokens=8, steps_per_block=2)
    out = generate(tiny_lm, ids, mask, config)
    assert_same(out, naive_generate(tiny_lm, ids, mask, config))
    assert out.completion_mask.all()
    assert (out.completion_ids != tiny_lm.eos_id).all()


def test_inference_mode_and_bfloat16(tiny_lm):
    lm = DiffusionLM(copy.deepcopy(tiny_lm.model).to(torch.bfloat16), tiny_lm.tokenizer, tiny_lm.family)
    ids, mask = ragged(lm, LENGTHS, seed=8)
    config = SamplerConfig(temperature=0.0, max_new_tokens=8, steps_per_block=2)
    with torch.inference_mode():
        out = generate(lm, ids, mask, config)
    ref = naive_generate(lm, ids, mask, config)
    assert out.completion_ids.shape == (len(LENGTHS), 8) and out.completion_mask.all()
    assert (out.completion_ids == ref.completion_ids).float().mean() > 0.5
