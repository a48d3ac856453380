"""Diffusion SFT: targets, EOS padding, and the loss going down on the tiny coder."""

import pytest
import torch

from rlwork.config import DataConfig
from rlwork.prompts import PromptStream, load_split
from rlwork.sft import encode_targets, run_sft, sft_loss, target_text


def test_targets_end_in_eos_and_pad_after(tiny_lm):
    ids, mask = encode_targets(tiny_lm, ["a", "abc def"], [1, 3])
    first = ids[0][mask[0]].tolist()
    assert first[-1] == tiny_lm.eos_id and first.count(tiny_lm.eos_id) == 1
    second = ids[1][mask[1]].tolist()
    assert second[-3:] == [tiny_lm.eos_id] * 3
    assert (ids[~mask] == tiny_lm.pad_id).all()


def test_target_needs_a_reference():
    with pytest.raises(ValueError, match="no 'reference'"):
        target_text({"task_id": "t1"})
    assert target_text({"reference": "def f():\n    return 1\n"}) == "```python\ndef f():\n    return 1\n```"


def test_sft_lowers_the_diffusion_loss():
    from rlwork.models import load_diffusion_lm

    lm = load_diffusion_lm("tiny", "stable-diffcoder")  # a private copy: SFT changes the weights
    problems = load_split(DataConfig(synthetic_train=8, synthetic_heldout=4), "train", seed=0)[:4]
    stream = PromptStream(problems, lm.tokenizer, chat=True, seed=0)
    prompts, targets = [stream.text(p) for p in problems], [target_text(p) for p in problems]

    def held_loss():
        with torch.no_grad():
            return float(sft_loss(lm, prompts, targets, torch.Generator().manual_seed(7), num_samples=4))

    before = held_loss()
    losses = run_sft(lm, problems, stream.text, steps=20, batch_size=4, lr=3e-3, seed=0, progress=False)
    after = held_loss()
    assert after < 0.8 * before, (before, after)
    assert losses[-1] < losses[0]
