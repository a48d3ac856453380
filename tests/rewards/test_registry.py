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


def test_parameterised_rewards_are_built_from_their_keywords():
    ids = [[1] * 3, [1] * 6, [1] * 9]  # token lengths 3, 6, 9
    for name in ("overlong", "rewards.shaping:OverlongPenalty"):  # built-in name, or the class by import path
        fn = get_reward(name, kwargs={"max_length": 8, "cache_length": 4})
        assert isinstance(fn, OverlongPenalty) and fn.__name__ == "overlong"
        assert fn(["p"] * 3, ["x"] * 3, completion_ids=ids) == [0.0, -0.5, -1.0]
        # the class is never called as the reward (every score was NaN that way): without its keywords, an error
        with pytest.raises(ValueError, match=r"OverlongPenalty\(max_length, cache_length\).*rewards.kwargs"):
            get_reward(name)
    with pytest.raises(ValueError, match="is a function and takes no parameters"):
        get_reward("format", kwargs={"max_length": 3})


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


def test_a_raising_reward_logs_its_traceback_once(caplog):
    def flaky(prompts, completions, **kw):
        raise KeyError("column 'answer'")

    registry.ERRORS.pop("flaky", None)
    with caplog.at_level("ERROR", logger="rewards.registry"):
        score_all([flaky], None, ["p"], ["c"], {})
        score_all([flaky], None, ["p"], ["c"], {})
    records = [r for r in caplog.records if "'flaky' raised" in r.getMessage()]
    assert len(records) == 2
    assert records[0].exc_info is not None and "raise KeyError" in caplog.text  # where it raised, the first time
    assert not records[1].exc_info


def test_a_reward_returning_none_for_a_whole_batch_is_said_once(caplog):
    def needs_answer(prompts, completions, **kw):
        return [None if kw.get("answer") is None else 1.0 for _ in completions]

    with caplog.at_level("WARNING", logger="rewards.registry"):
        score_all([needs_answer], None, ["p", "p"], ["a", "b"], {"solution": ["x", "y"]})
        score_all([needs_answer], None, ["p", "p"], ["a", "b"], {"solution": ["x", "y"]})
    said = [r.getMessage() for r in caplog.records if "returned None for all" in r.getMessage()]
    assert len(said) == 1 and "'needs_answer'" in said[0] and "['solution']" in said[0]
