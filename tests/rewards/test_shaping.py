import math

import pytest

from rewards.shaping import FormatReward, OverlongPenalty, WeightedSum

# (completion, format, format_think)
FORMAT_CASES = [
    ("```python\nx = 1\n```", 1.0, 0.0),  # code, no think
    ("<think>plan</think>\n```python\nx = 1\n```", 1.0, 1.0),  # think then code
    ("<think>```python\nx = 1\n```</think>", 1.0, 0.0),  # code only inside think
    ("x = 1", 0.0, 0.0),  # no code block
    ([{"role": "assistant", "content": "```python\nx\n```"}], 1.0, 0.0),  # conversational
]


@pytest.mark.parametrize("completion,plain,think", FORMAT_CASES)
def test_format_reward(completion, plain, think):
    assert FormatReward()(["p"], [completion]) == [plain]
    assert FormatReward(require_think=True)(["p"], [completion]) == [think]


# (length, expected penalty) with max_length=100, cache_length=20
OVERLONG_CASES = [
    (0, 0.0),  # empty
    (80, 0.0),  # at the start of the ramp
    (90, -0.5),  # half-way down the ramp
    (100, -1.0),  # at the maximum
    (150, -1.0),  # beyond
]


@pytest.mark.parametrize("length,expected", OVERLONG_CASES)
def test_overlong_penalty_in_characters_and_tokens(length, expected):
    fn = OverlongPenalty(max_length=100, cache_length=20)
    assert fn(["p"], ["a" * length]) == [pytest.approx(expected)]
    assert fn(["p"], ["short"], completion_ids=[[7] * length]) == [pytest.approx(expected)]


def test_overlong_penalty_validates():
    with pytest.raises(ValueError, match="cache_length=0"):
        OverlongPenalty(max_length=10, cache_length=0)


def test_weighted_sum_skips_none_components():
    def half(prompts, completions, **kw):
        return [0.5, None, None]

    def one(prompts, completions, **kw):
        return [1.0, 1.0, None]

    fn = WeightedSum([half, one], [2.0, 3.0])
    assert fn(["p"] * 3, ["a", "b", "c"]) == [4.0, 3.0, None]
    assert fn.__name__ == "weighted(half,one)"
    with pytest.raises(ValueError, match="one per reward"):
        WeightedSum([half], [1.0, 2.0])
    assert not math.isnan(fn(["p"], ["a"] * 3)[0])
