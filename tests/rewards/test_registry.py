import math
import pickle

import pytest

from rewards import registry
from rewards.registry import REWARD_FNS, get_reward, score_all
from rewards.shaping import OverlongPenalty
from rewards.unit_tests import UnitTestReward


def user_reward(prompts, completions, **kw):
    return [float(len(c)) for c in completions]


def test_builtin_and_dotted_lookup():
    assert get_reward("format") is REWARD_FNS["format"]
    assert get_reward(f"{__name__}:user_reward") is user_reward
    assert get_reward(f"{__name__}.user_reward") is user_reward
    assert get_reward("rewards.shaping:format_reward") is REWARD_FNS["format"]


@pytest.mark.parametrize("name,message", [
    ("nope", "built-in rewards are"),  # unknown name lists the valid ones
    ("rewards.shaping:nope", "cannot import 'nope'"),  # missing attribute
    ("no_such_module.fn", "cannot import"),  # missing module
    ("rewards.shaping:math", "not callable"),  # a module is not a reward
])
def test_lookup_errors(name, message):
    with pytest.raises(ValueError, match=message):
        get_reward(name)


@pytest.mark.parametrize("fn", [UnitTestReward(binary=True), OverlongPenalty(max_length=5, cache_length=2),
                                *REWARD_FNS.values()])
def test_parameterised_rewards_pickle_with_a_name(fn):
    back = pickle.loads(pickle.dumps(fn))
    assert back.__name__ == fn.__name__ and type(back) is type(fn)


def test_score_all_isolates_a_raising_reward(caplog):
    def broken(prompts, completions, **kw):
        raise RuntimeError("boom")

    def short(prompts, completions, **kw):
        return [1.0]  # wrong length

    before = registry.ERRORS.get("broken", 0)
    s = score_all([user_reward, broken, short], [1.0, 5.0, 1.0], ["p", "p"], ["ab", "abc"], {})
    assert s.total == [2.0, 3.0]
    assert all(math.isnan(v) for v in s.per_reward["broken"] + s.per_reward["short"])
    assert set(s.errors) == {"broken", "short"} and "boom" in s.errors["broken"]
    assert registry.ERRORS["broken"] == before + 1
    assert "broken" in caplog.text


def test_score_all_none_is_nan_and_all_nan_total():
    def never(prompts, completions, **kw):
        return [None, None]

    s = score_all([never], None, ["p", "p"], ["a", "b"], {})
    assert all(math.isnan(v) for v in s.total)
    with pytest.raises(ValueError, match="one per reward"):
        score_all([never], [1.0, 2.0], ["p"], ["a"], {})
