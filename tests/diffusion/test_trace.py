"""The trajectory likelihood: hand-computed cases, one forward == step loop, recomputed == the sampler's record.

The exactness tests sample with `generate` (exact KV cache unless said otherwise) and require the recomputed
per-token log-probs to equal the recorded `sampling_per_token_logps` to 1e-4, on ragged prompts (lengths 5, 8, 11,
14, 3, 6: every offset mod 4), under each sampler setting that changes the trajectory.
"""

import copy
import dataclasses
import math

import pytest
import torch
from torch import nn

from rlwork.diffusion.sampler import SamplerConfig, generate
from rlwork.diffusion.trace import (
    local_steps,
    token_logps,
    token_logps_and_entropy,
    trace_logps,
    trace_logps_loop,
    trace_logps_one_forward,
)
from rlwork.models.lm import DiffusionLM, FamilySpec
from rlwork.runtime.engine import apply_lora

LENGTHS = [5, 8, 11, 14, 3, 6]  # prompt lengths mod 4: 1, 0, 3, 2, 3, 2


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


def sample(lm, config: SamplerConfig, seed: int = 0, model=None, lengths=LENGTHS):
    ids, mask = ragged(lm, lengths, seed)
    out = generate(lm, ids, mask, config, generator=torch.Generator().manual_seed(seed), model=model)
    return ids, mask, out


def score(fn, lm, ids, mask, out, config: SamplerConfig, model=None, completion_mask=None):
    return fn(lm, ids, mask, out.trace_ids, out.trace_step, out.completion_mask if completion_mask is None
              else completion_mask, temperature=config.temperature, top_k=config.top_k, top_p=config.top_p,
              model=model)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


class LogitBias(nn.Module):
    """Passed as a DiffusionLM's model: the wrapped model with a constant added to one token's logit."""

    def __init__(self, inner: nn.Module, token: int, bias: float):
        super().__init__()
        self.inner, self.config = inner, inner.config
        self.register_buffer("bias", torch.zeros(inner.config.vocab_size).index_fill_(0, torch.tensor(token), bias))

    def forward(self, **kwargs):
        out = self.inner(**kwargs)
        out.logits = out.logits + self.bias
        return out


@pytest.fixture(scope="module")
def eos_lm(tiny_lm):
    """The tiny coder with EOS made ~5% likely per token, so sampled rows stop at varied places."""
    return DiffusionLM(LogitBias(tiny_lm.model, tiny_lm.eos_id, 4.0), tiny_lm.tokenizer, tiny_lm.family)


# ---------------------------------------------------------------------------------------------------------------
# Hand-computed: a bag-of-visible-tokens model


class Bag(nn.Module):
    """logits at a query = how often each token id occurs among the keys it may see (identity embedding).

    So log p(x | canvas) = count[x] / T - logsumexp over the non-mask ids of count / T: hand-computable."""

    def __init__(self, vocab: int):
        super().__init__()
        self.embed = nn.Parameter(torch.eye(vocab))

    def forward(self, input_ids, attention_mask, logits_to_keep=0, **_):
        allowed = (attention_mask[:, 0] == 0).to(self.embed.dtype)  # [N, T, K]
        logits = allowed @ self.embed[input_ids]  # [N, T, V]
        return dataclasses.make_dataclass("Out", ["logits"])(logits[:, -logits_to_keep:])


def bag_lm(attention: str) -> DiffusionLM:
    # ids: 0 mask, 1 eos, 2 pad, 3-5 ordinary; block size 2
    family = FamilySpec(name="bag", attention=attention, block_size=2 if attention == "block_causal" else None,
                        shift_logits=False, mask_token_id=0, eos_token_id=1, pad_token_id=2)
    return DiffusionLM(Bag(6), None, family)


# Prompt [3, 4, 5] (3 tokens: completion block 0 is the prompt's token 5 + completion token 0). Completion
# [4, EOS, 3 (after EOS: committed, not real), -]: token 0 at step 0, the ghost 3 at step 1, EOS at step 2; the last
# position was never denoised (its block came after the stop).
BAG_PROMPT = torch.tensor([[2, 3, 4, 5]]), torch.tensor([[False, True, True, True]])
BAG_TRACE = torch.tensor([[4, 1, 3, 2]]), torch.tensor([[0, 2, 1, -1]]), torch.tensor([[True, True, False, False]])


def bag_expected(temperature: float) -> list[float]:
    """Counts of ids 1..5 (eos, pad, 3, 4, 5) among the visible keys, written out by hand."""
    def logp(counts: list[int], target: int) -> float:
        z = [c / temperature for c in counts]
        return z[target - 1] - math.log(sum(math.exp(v) for v in z))

    # token 0 (4) before step 0: prompt 3, 4, 5 and its own block [mask] -> 3:1, 4:1, 5:1
    # EOS before step 2: prompt, clean token 0 (4), its block [mask, ghost 3] -> 3:2, 4:2, 5:1
    return [logp([0, 0, 1, 1, 1], 4), logp([0, 0, 2, 2, 1], 1), 0.0, 0.0]


@pytest.mark.parametrize("attention", ["block_causal", "bidirectional"])
@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_bag_model_known_answer(attention, temperature):
    lm = bag_lm(attention)
    fns = [trace_logps_loop] + ([trace_logps_one_forward] if attention == "block_causal" else [])
    for fn in fns:
        out = fn(lm, *BAG_PROMPT, *BAG_TRACE, temperature=temperature)
        torch.testing.assert_close(out.per_token[0], torch.tensor(bag_expected(temperature)), atol=1e-6, rtol=0)
        assert out.model_calls == (1 if fn is trace_logps_one_forward else 2)  # steps 0 and 2 score; 1 is a ghost


def test_bag_model_ghost_matters_and_padding_does_not():
    """Without the ghost token after EOS the EOS's answer changes; one pad column less changes nothing."""
    lm, (prompt_ids, prompt_mask) = bag_lm("block_causal"), BAG_PROMPT
    trace_ids, trace_step, completion_mask = BAG_TRACE
    no_ghost = trace_step.masked_fill(~completion_mask, -1)
    out = trace_logps_one_forward(lm, prompt_ids, prompt_mask, trace_ids, no_ghost, completion_mask, temperature=1.0)
    assert abs(out.per_token[0, 1].item() - bag_expected(1.0)[1]) > 0.1
    shorter = trace_logps_one_forward(lm, prompt_ids[:, 1:], prompt_mask[:, 1:], trace_ids, trace_step,
                                      completion_mask, temperature=1.0)  # same tokens: still exact
    torch.testing.assert_close(shorter.per_token[0], torch.tensor(bag_expected(1.0)), atol=1e-6, rtol=0)


def test_local_steps_known_answer_and_order_check():
    # offset 1, block 4: completion blocks [0..2], [3..6], [7]
    steps = torch.tensor([[1, 0, 2, 4, 3, 5, 3, -1]])
    assert local_steps(steps, torch.tensor([1]), 4).tolist() == [[1, 0, 2, 1, 0, 2, 0, -1]]
    with pytest.raises(ValueError, match="block-by-block"):
        local_steps(torch.tensor([[1, 0, 3, 2, 4, 5, 6, 7]]), torch.tensor([1]), 4)  # block 1's step 2 < block 0's 3


def test_token_logps_known_answer():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05, 0.0]]).log().expand(4, 5)  # token 4 plays the mask (p = 0)
    targets = torch.tensor([0, 1, 2, 3])
    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    torch.testing.assert_close(token_logps(logits, targets, 4, 1.0, None, None), p.log())
    torch.testing.assert_close(token_logps(logits, targets, 4, 0.0, None, None), p.log())  # greedy: T = 1
    sq = p ** 2 / (p ** 2).sum()
    torch.testing.assert_close(token_logps(logits, targets, 4, 0.5, None, None), sq.log())
    top2 = torch.tensor([0.5 / 0.8, 0.3 / 0.8]).log()
    got = token_logps(logits, targets, 4, 1.0, 2, None)
    torch.testing.assert_close(got[:2], top2)
    assert got[2:].isneginf().all()
    torch.testing.assert_close(token_logps(logits, targets, 4, 1.0, None, 0.6)[:2], top2)


def test_sampling_entropy_known_answer():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05, 0.0]]).log().expand(3, 5)  # token 4 plays the mask (p = 0)
    targets = torch.tensor([0, 1, 2])
    p = torch.tensor([0.5, 0.3, 0.15, 0.05])

    def h(q: torch.Tensor) -> torch.Tensor:
        return -(q * q.log()).sum()

    def entropy(*args) -> torch.Tensor:
        return token_logps_and_entropy(logits, targets, 4, *args)[1]

    torch.testing.assert_close(entropy(1.0, None, None), 3 * h(p))
    torch.testing.assert_close(entropy(0.5, None, None), 3 * h(p ** 2 / (p ** 2).sum()))
    torch.testing.assert_close(entropy(1.0, 2, None), 3 * h(torch.tensor([0.625, 0.375])))
    torch.testing.assert_close(token_logps_and_entropy(logits, targets, 4, 0.5, None, None)[0],
                               token_logps(logits, targets, 4, 0.5, None, None))
    masked_out = torch.tensor([[0.0, 0.0, 5.0]])  # all mass on the mask token, which the sampler never draws
    torch.testing.assert_close(token_logps_and_entropy(masked_out, torch.tensor([0]), 2, 1.0, None, None)[1],
                               torch.tensor(math.log(2)))


# ---------------------------------------------------------------------------------------------------------------
# Recomputed == recorded, and one forward == loop, on the tiny coder


CONFIGS = {
    "sampled": SamplerConfig(max_new_tokens=14, steps_per_block=4),
    "two_steps": SamplerConfig(max_new_tokens=14, steps_per_block=2, temperature=0.8),
    "top_k_top_p": SamplerConfig(max_new_tokens=14, steps_per_block=4, temperature=0.7, top_k=40, top_p=0.9),
    "greedy": SamplerConfig(max_new_tokens=14, steps_per_block=3, temperature=0.0),
    "threshold": SamplerConfig(max_new_tokens=14, steps_per_block=4, threshold=0.0013),
    "one_step_per_block": SamplerConfig(max_new_tokens=14, steps_per_block=4, threshold=0.0),
    "margin": SamplerConfig(max_new_tokens=14, steps_per_block=4, remasking="margin"),
    "entropy": SamplerConfig(max_new_tokens=14, steps_per_block=3, remasking="entropy"),
    "random": SamplerConfig(max_new_tokens=14, steps_per_block=4, remasking="random"),
    "no_cache": SamplerConfig(max_new_tokens=14, steps_per_block=4, use_cache=False),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_recomputed_equals_recorded_and_fast_equals_loop(tiny_lm, name):
    config = CONFIGS[name]
    ids, mask, out = sample(tiny_lm, config, seed=1)
    with torch.no_grad():
        fast = score(trace_logps_one_forward, tiny_lm, ids, mask, out, config)
        loop = score(trace_logps_loop, tiny_lm, ids, mask, out, config)
    assert max_diff(fast.per_token, out.sampling_per_token_logps) <= 1e-4
    assert max_diff(fast.per_token, loop.per_token) <= 1e-5
    assert float(fast.entropy) > 0 and abs(float(fast.entropy) - float(loop.entropy)) <= 1e-4
    assert fast.model_calls == 1 and loop.model_calls == int(out.row_steps.max())
    assert (fast.per_token[out.completion_mask] < 0).all() and (fast.per_token[~out.completion_mask] == 0).all()
    torch.testing.assert_close(fast.sequence, fast.per_token.sum(-1))
    per_step = [torch.bincount(s[s >= 0]) for s in out.trace_step]
    if name == "threshold":
        assert any((c > 1).any() for c in per_step) and any((c == 1).any() for c in per_step)
    if name == "one_step_per_block":
        assert out.row_steps.tolist() == [4, 4, 5, 4, 5, 4]  # completion blocks per row: every block in one step


def test_eos_mid_block_keeps_the_tokens_after_it(eos_lm):
    config = SamplerConfig(max_new_tokens=14, steps_per_block=4)
    ids, mask, out = sample(eos_lm, config, seed=3, lengths=LENGTHS * 2)
    lengths = out.completion_mask.sum(1)
    ghosts = (out.trace_step >= 0) & ~out.completion_mask  # committed after EOS in the stopping block
    assert (lengths < 14).any() and (lengths == 14).any() and ghosts.any()
    with torch.no_grad():
        fast = score(trace_logps_one_forward, eos_lm, ids, mask, out, config)
        loop = score(trace_logps_loop, eos_lm, ids, mask, out, config)
        blind = trace_logps_one_forward(eos_lm, ids, mask, out.trace_ids, out.trace_step.masked_fill(ghosts, -1),
                                        out.completion_mask, temperature=1.0)
    assert max_diff(fast.per_token, out.sampling_per_token_logps) <= 1e-4
    assert max_diff(fast.per_token, loop.per_token) <= 1e-5
    assert float(fast.entropy) > 0 and abs(float(fast.entropy) - float(loop.entropy)) <= 1e-4
    assert max_diff(blind.per_token, out.sampling_per_token_logps) > 1e-3  # the ghosts were seen by the sampler


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_lora_eval_mode_matches_and_dropout_in_train_mode_does_not(tiny_lm, dropout):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        peft = apply_lora(copy.deepcopy(tiny_lm.model), r=4, alpha=8, dropout=dropout)
        for name, param in peft.named_parameters():
            if "lora_B" in name:
                nn.init.normal_(param, std=0.05)  # B starts at 0 (adapter = identity): make it change the model
    lm = DiffusionLM(peft, tiny_lm.tokenizer, tiny_lm.family)
    config = CONFIGS["threshold"]
    peft.eval()
    ids, mask, out = sample(lm, config, seed=4)
    plain = generate(tiny_lm, ids, mask, config, generator=torch.Generator().manual_seed(4))
    assert not torch.equal(plain.completion_ids, out.completion_ids)  # the adapter matters
    with torch.no_grad():
        assert max_diff(score(trace_logps, lm, ids, mask, out, config).per_token, out.sampling_per_token_logps) <= 1e-4
        peft.train()
        train_mode = score(trace_logps, lm, ids, mask, out, config).per_token
        peft.eval()
    assert (max_diff(train_mode, out.sampling_per_token_logps) > 1e-3) == (dropout > 0)


def test_gradients_of_fast_and_loop_agree(tiny_lm):
    peft = apply_lora(copy.deepcopy(tiny_lm.model), r=2, alpha=4)
    lm = DiffusionLM(peft, tiny_lm.tokenizer, tiny_lm.family)
    config = CONFIGS["sampled"]
    ids, mask, out = sample(lm, config, seed=5)
    grads = []
    for fn in (trace_logps_one_forward, trace_logps_loop):
        peft.zero_grad()
        score(fn, lm, ids, mask, out, config).sequence.sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in peft.parameters() if p.requires_grad]))
    assert grads[0].abs().max() > 0
    torch.testing.assert_close(grads[0], grads[1], atol=1e-4, rtol=1e-4)


def shifted(lm: DiffusionLM) -> DiffusionLM:
    return DiffusionLM(lm.model, lm.tokenizer, dataclasses.replace(lm.family, shift_logits=True))


@pytest.mark.parametrize("shift", [False, True])
def test_bidirectional_loop_matches_exact_sampler_not_prefix_cache(tiny_bidir_lm, shift):
    lm = shifted(tiny_bidir_lm) if shift else tiny_bidir_lm
    config = SamplerConfig(max_new_tokens=12, steps_per_block=3, block_size=4, use_cache=False)
    ids, mask, out = sample(lm, config, seed=6)
    with torch.no_grad():
        loop = score(trace_logps, lm, ids, mask, out, config)
        assert max_diff(loop.per_token, out.sampling_per_token_logps) <= 1e-4
        assert loop.model_calls == 9
        with pytest.raises(ValueError, match="block-causal, unshifted"):
            score(trace_logps_one_forward, lm, ids, mask, out, config)
        cached = dataclasses.replace(config, use_cache=True)  # Fast-dLLM's prefix cache: stale keys
        _, _, approx = sample(lm, cached, seed=6)
        recomputed = score(trace_logps, lm, ids, mask, approx, cached)
    assert max_diff(recomputed.per_token, approx.sampling_per_token_logps) > 1e-4


def test_shifted_block_causal_uses_the_loop(tiny_lm):
    lm = shifted(tiny_lm)
    config = CONFIGS["sampled"]
    ids, mask, out = sample(lm, config, seed=7)
    with torch.no_grad():
        out_trace = score(trace_logps, lm, ids, mask, out, config)
    assert out_trace.model_calls == int(out.row_steps.max())
    assert max_diff(out_trace.per_token, out.sampling_per_token_logps) <= 1e-4


def test_bfloat16_agrees_to_bf16_precision(tiny_lm):
    lm = DiffusionLM(copy.deepcopy(tiny_lm.model).to(torch.bfloat16), tiny_lm.tokenizer, tiny_lm.family)
    config = CONFIGS["sampled"]
    ids, mask, out = sample(lm, config, seed=8)
    with torch.no_grad():
        fast = score(trace_logps_one_forward, lm, ids, mask, out, config)
    assert fast.per_token.dtype == torch.float32
    assert max_diff(fast.per_token, out.sampling_per_token_logps) <= 0.02  # measured ~4e-3


def test_invalid_inputs_say_how_to_fix(tiny_lm):
    config = CONFIGS["sampled"]
    ids, mask, out = sample(tiny_lm, config, seed=9)
    with pytest.raises(ValueError, match="trace_step"):
        trace_logps(tiny_lm, ids, mask, out.trace_ids, out.trace_step.masked_fill(out.trace_step == 0, -1),
                    out.completion_mask, temperature=1.0)
    with pytest.raises(ValueError, match="one \\[N, L\\] shape"):
        trace_logps(tiny_lm, ids, mask, out.trace_ids[:, :5], out.trace_step, out.completion_mask, temperature=1.0)
