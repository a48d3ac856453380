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


def test_weighted_total_nansum_convention():
    nan = math.nan
    out = registry.weighted_total([[1, nan, 0.5], [nan, nan, 2]], [2, 0.5])  # columns: rewards; rows: completions
    assert out[0] == 2 and math.isnan(out[1]) and out[2] == 2
    assert registry.weighted_total([[1, 3], [2, nan]], [1, 1]) == [3, 3]
    with pytest.raises(ValueError):
        registry.weighted_total([[1, 2]], [1, 2, 3])  # one weight per reward


def test_detailed_rewards_report_details_and_sandbox_settings_reach_them():
    from rewards.contract import Detailed

    class Probe:
        __name__ = "probe"

        def __init__(self, timeout=None):
            self.timeout = timeout

        def with_sandbox(self, timeout=None, max_concurrency=None, allow_weak=None):
            return Probe(timeout)

        def __call__(self, prompts, completions, **kw):
            return self.detailed(prompts, completions, **kw).scores

        def detailed(self, prompts, completions, **kw):
            return Detailed([1.0] * len(completions), [f"t={self.timeout}"] * len(completions))

    registry.REWARD_FNS["probe"] = Probe()
    try:
        fn = get_reward("probe", sandbox={"timeout": 3.0})
    finally:
        del registry.REWARD_FNS["probe"]
    assert fn.timeout == 3.0 and get_reward("format", sandbox={"timeout": 3.0}) is REWARD_FNS["format"]
    s = score_all([fn, user_reward], None, ["p"], ["ab"], {})
    assert s.details == {"probe": ["t=3.0"]} and s.total == [3.0]
