"""Diffusion SFT maths: targets, EOS padding, the learning-rate schedule, and the loss going down on the tiny coder."""

import math

import pytest
import torch

from rlwork.config import DataConfig
from rlwork.data.prompts import PromptStream, load_split
from rlwork.sft.objective import (
    check_targets,
    continue_files,
    continues_prompts,
    encode_targets,
    learning_rate_at,
    make_batch,
    negative_elbo,
    script_style,
    target_text,
)


def sft_loss(lm, prompt_texts, targets, generator, max_eos=4, num_samples=1, model=None):
    """Per-token negative ELBO of `targets` given `prompt_texts` (a 0-d tensor with grad): the SFT step's loss."""
    batch = make_batch(lm, prompt_texts, targets, generator, max_eos)
    return negative_elbo(lm, batch, generator, num_samples, model).sum() / batch.completion_mask.sum()


def test_targets_end_in_eos_and_pad_after(tiny_lm):
    ids, mask = encode_targets(tiny_lm, ["a", "abc def"], [1, 3])
    first = ids[0][mask[0]].tolist()
    assert first[-1] == tiny_lm.eos_id and first.count(tiny_lm.eos_id) == 1
    second = ids[1][mask[1]].tolist()
    assert second[-3:] == [tiny_lm.eos_id] * 3
    assert (ids[~mask] == tiny_lm.pad_id).all()


def test_a_target_longer_than_its_window_is_cut_there_with_no_eos(tiny_lm):
    text = "def f(x):\n    return x + 1\n"
    tokens = tiny_lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(tokens) > 5
    ids, mask = encode_targets(tiny_lm, [text, text, text], [2, 2, 2], [5, len(tokens), None])
    assert ids[0][mask[0]].tolist() == tokens[:5]  # cut at the window: the file went on, no EOS
    assert ids[1][mask[1]].tolist() == tokens + [tiny_lm.eos_id] * 2  # fits its window: ends like any other
    assert ids[2][mask[2]].tolist() == tokens + [tiny_lm.eos_id] * 2


def test_a_file_that_goes_on_is_followed_by_the_next_rows_function():
    targets = ["    return -x\n", "    return x * 2\n", "    return 0\n"]
    references = ["def negate(x):\n    return -x\n", "def double(x):\n    return x * 2\n",
                  "def zero():\n    return 0\n"]
    out = continue_files(targets, references, [False, True, True])
    assert out[0] == targets[0]
    assert out[1] == "    return x * 2\n\n\ndef zero():\n    return 0\n"
    assert out[2] == "    return 0\n\n\ndef negate(x):\n    return -x\n"  # the last row: the first row's function
    compile("def double(x):\n" + out[1], "<file>", "exec")  # still one valid file
    with pytest.raises(ValueError, match="one of each per row"):
        continue_files(targets, references[:2], [True, True, True])


def test_script_style_prints_the_last_return_and_leaves_the_rest():
    body = "    x = [v for v in x if v % 2 == 0]\n    return x[:2]\n"
    printed = script_style(body)
    assert printed == "    x = [v for v in x if v % 2 == 0]\n    print(x[:2])\n"
    namespace = {}
    exec("def f(x):\n" + printed, namespace)  # still a valid function, and it returns None
    assert namespace["f"]([1, 2, 4]) is None
    assert script_style("        return -x  \n\n") == "        print(-x)\n\n"
    for unchanged in ("    pass\n", "    return\n", "    y = 1\n    return x\n    z = 2\n", ""):
        assert script_style(unchanged) == unchanged


def test_target_needs_a_reference():
    with pytest.raises(ValueError, match="no 'reference'"):
        target_text({"task_id": "t1"})
    with pytest.raises(ValueError, match="non-text 'reference' \\(list\\)"):
        target_text({"task_id": "t1", "reference": ["def f(): pass"]})
    assert target_text({"reference": "def f():\n    return 1\n"}) == "```python\ndef f():\n    return 1\n```"


def test_check_targets_names_the_row_and_the_fix():
    rows = [{"task_id": "a", "reference": "x = 1"}, {"task_id": "b", "reference": "   "}]
    with pytest.raises(ValueError, match=r"row 1 of my data: task 'b' has no 'reference'.*data.columns"):
        check_targets(rows, "my data")
    check_targets(rows[:1])


CASES = [
    # (step, total, peak, warmup, schedule, expected)
    (0, 10, 1.0, 0, "constant", 1.0),                  # no warm-up: the peak at once
    (0, 10, 1.0, 4, "constant", 0.25),                 # warm-up step 1 of 4
    (3, 10, 1.0, 4, "constant", 1.0),                  # warm-up done
    (5, 10, 2.0, 0, "cosine", 1.0),                    # half-way down the cosine: peak / 2
    (1, 10, 1.0, 2, "cosine", 0.5 * (1 + math.cos(math.pi / 10))),  # warm-up ends where the cosine has begun
]


@pytest.mark.parametrize("step, total, peak, warmup, schedule, expected", CASES)
def test_learning_rate_schedule(step, total, peak, warmup, schedule, expected):
    assert learning_rate_at(step, total, peak, warmup, schedule) == pytest.approx(expected)


def test_learning_rate_matches_the_old_warm_start_formula():
    """The demo's warm start used min(1, (i+1)/max(1, steps//20)) * cosine; the default keeps it."""
    steps, peak = 100, 3e-3
    for i in range(steps):
        old = min(1.0, (i + 1) / max(1, steps // 20)) * 0.5 * (1 + math.cos(math.pi * i / steps)) * peak
        assert learning_rate_at(i, steps, peak, max(1, steps // 20)) == pytest.approx(old)
    with pytest.raises(ValueError, match="choose 'cosine' or 'constant'"):
        learning_rate_at(0, 10, 1.0, 0, "linear")


def test_sft_loss_is_the_per_token_mean_of_negative_elbo(tiny_lm):
    problems = load_split(DataConfig(synthetic_train=8, synthetic_heldout=4), "train", seed=0)[:3]
    stream = PromptStream(problems, tiny_lm.tokenizer, chat=True, seed=0)
    prompts, targets = [stream.text(p) for p in problems], [target_text(p) for p in problems]
    with torch.no_grad():
        loss = sft_loss(tiny_lm, prompts, targets, torch.Generator().manual_seed(3))
        gen = torch.Generator().manual_seed(3)
        batch = make_batch(tiny_lm, prompts, targets, gen, max_eos=4)
        rows = negative_elbo(tiny_lm, batch, gen)  # [N]
    assert rows.shape == (3,) and (rows > 0).all()
    assert float(loss) == pytest.approx(float(rows.sum() / batch.completion_mask.sum()))


def test_continuation_targets_follow_the_stub():
    """Plain code-stub prompts: the target is what a base model writes after the stub; the reward runs both."""
    from rewards.extract import program_for

    stub = 'def f(x: int) -> int:\n    """Add 1."""\n'
    synthetic = {"prompt": stub, "entry_point": "f", "reference": "def f(x: int) -> int:\n    return x + 1\n"}
    humaneval = dict(synthetic, reference=stub + "    return x + 1\n")
    for problem in (synthetic, humaneval):
        target = target_text(problem, continuation=True)
        assert target == "    return x + 1\n"
        assert program_for(stub, target, "f") == stub + target
        assert target_text(problem).startswith("```python\ndef f")  # chat: a fenced answer
    natural = {"prompt": "Write f, adding 1.", "entry_point": "f", "reference": synthetic["reference"]}
    assert target_text(natural, continuation=True).startswith("```python")  # nothing to continue: fenced
    other = dict(synthetic, reference="def f(y):\n    return y + 1\n")
    with pytest.raises(ValueError, match="data.chat=true"):
        target_text(other, continuation=True)
    assert continues_prompts(DataConfig(chat=False, prompt_style="bare"))
    assert not continues_prompts(DataConfig(chat=False)) and not continues_prompts(DataConfig(prompt_style="bare"))


def test_continuation_targets_of_the_synthetic_family_rebuild_the_reference():
    for problem in load_split(DataConfig(synthetic_train=32, synthetic_heldout=0), "train", seed=0):
        assert problem["prompt"].split("\n")[0] + "\n" + target_text(problem, True) == problem["reference"]
