"""Re-scoring saved rollouts: hand-computed disagreement and advantage changes, the identity case, test-based
rewards joined to their problems, group checks, and the text report."""

import json
import sys

import pytest

from rlwork.rl.rescore import format_rescore_report, rescore
from rlwork.runtime.tracking import save_rollouts

FENCED = "```python\n{}\n```"


def row(task_id: str, group_id: int, completion: str, reward: float, advantage: float, **extra) -> dict:
    return {"task_id": task_id, "prompt": f"solve {task_id}", "completion": completion, "reward": reward,
            "advantage": advantage, "group_id": group_id, "verdict": "", "tests": [], **extra}


def save_run(run_dir, steps: dict[int, list[dict]]) -> None:
    for step, rows in steps.items():
        save_rollouts(run_dir, step, rows)


# Old reward: 1 = "tests passed" as the run saw it; new reward: the built-in `format` (1 = fenced code block).
# Old advantages are Dr.GRPO's (r - group mean, G = 2), as the run would have stored them.
HAND = {
    0: [row("a", 0, FENCED.format("A"), 0.0, 0.0), row("a", 0, "B", 0.0, 0.0),  # no signal -> signal
        row("b", 1, FENCED.format("C"), 1.0, 0.5), row("b", 1, FENCED.format("D"), 0.0, -0.5)],  # -> no signal
    1: [row("c", 0, "E", 1.0, 0.5), row("c", 0, FENCED.format("F"), 0.0, -0.5),  # both advantages flip sign
        row("d", 1, FENCED.format("G"), 1.0, 0.5), row("d", 1, "H", 0.0, -0.5)],  # agree
}


def test_hand_computed_changes(tmp_path):
    save_run(tmp_path, HAND)
    result = rescore(tmp_path, ["format"], None, None, "dr_grpo", progress=False)
    assert (result["num_rows"], result["num_groups"], result["num_generations"]) == (8, 4, 2)
    assert result["new"]["format"]["mean"] == result["new"]["total"]["mean"] == 5 / 8
    assert result["old"]["total"]["mean"] == 3 / 8
    dis = result["disagreement"]
    assert (dis["rows"], dis["frac"]) == (4, 0.5)
    assert sorted((e["step"], e["task_id"], e["old"], e["new"]) for e in dis["examples"]) == [
        (0, "a", 0.0, 1.0), (0, "b", 0.0, 1.0), (1, "c", 0.0, 1.0), (1, "c", 1.0, 0.0)]
    adv = result["advantages"]
    # |delta|: group a 0.5, 0.5; b 0.5, 0.5; c 1, 1; d 0, 0 -> mean 0.5. Sign flips: both rows of c.
    assert adv["mean_abs_delta"] == pytest.approx(0.5) and adv["max_abs_delta"] == pytest.approx(1.0)
    assert adv["sign_flip_frac"] == 0.25
    assert adv["sign_change_frac"] == 0.75  # a: 0 -> +-, b: +- -> 0, c: flipped
    assert adv["zero_std_changed_frac"] == 0.5
    assert (adv["groups_became_zero_std"], adv["groups_gained_signal"]) == (1, 1)
    assert adv["stored_advantage_max_abs_diff"] == 0.0  # dr_grpo reproduces what the run stored
    assert adv["scale_rewards"] == "none"  # the estimator's default, resolved
    json.dumps(result)
    text = format_rescore_report(result)
    assert "had no problem row" not in text  # format reads no dataset column
    assert "4/8 rows (50.0%)" in text and "1 lost their signal, 1 gained one" in text and "note:" not in text


def test_another_estimator_is_flagged_against_the_stored_advantages(tmp_path):
    save_run(tmp_path, HAND)
    result = rescore(tmp_path, ["format"], [2.0], 2, "rloo", progress=False)
    # RLOO with G = 2 is twice the centred reward: old advantages 2 * 0.5 = 1 where the run stored 0.5.
    assert result["advantages"]["stored_advantage_max_abs_diff"] == pytest.approx(0.5)
    assert result["new"]["total"]["mean"] == pytest.approx(2 * 5 / 8)  # weights apply
    assert "note: the run's stored advantages differ" in format_rescore_report(result)


def test_same_rewards_and_weights_reproduce_the_run(tmp_path):
    rows = {
        3: [row("a", 0, FENCED.format("x"), 0.5, 0.25, **{"reward/format": 1.0}),
            row("a", 0, "x", 0.0, -0.25, **{"reward/format": 0.0}),
            row("b", 1, "y", 0.0, 0.0, **{"reward/format": 0.0}),
            row("b", 1, "z", 0.0, 0.0, **{"reward/format": 0.0})],
    }
    save_run(tmp_path, rows)
    result = rescore(tmp_path, ["format"], [0.5], None, "dr_grpo", progress=False)
    assert result["disagreement"]["rows"] == 0 and result["disagreement"]["per_reward"] == {"format": 0.0}
    assert result["advantages"]["mean_abs_delta"] == 0.0 and result["advantages"]["zero_std_changed_frac"] == 0.0
    assert result["old"]["format"]["mean"] == 0.25 and result["steps"] == [3]


def _tests_spec(name: str, cases: list[tuple[int, int]]) -> str:
    return json.dumps({"kind": "call", "entry_point": name, "cases": [{"args": [a], "expected": e} for a, e in cases]})


def test_unit_test_rewards_read_the_problems_joined_on_task_id(tmp_path):
    good, bad = FENCED.format("def inc(x):\n    return x + 1"), FENCED.format("def inc(x):\n    return x")
    problems = [{"task_id": "inc", "prompt": "inc", "entry_point": "inc",
                 "tests": _tests_spec("inc", [(1, 2), (0, 1)])}]
    # the run thought both were right (a broken reward, say): one group without signal
    save_run(tmp_path, {0: [row("inc", 0, good, 1.0, 0.0), row("inc", 0, bad, 1.0, 0.0)]})
    result = rescore(tmp_path, ["unit_tests_binary"], None, None, "grpo", problems=problems, timeout_s=2.0,
                     progress=False)
    assert result["rows_without_problem"] == 0
    assert [e["new"] for e in result["disagreement"]["examples"]] == [0.0]
    assert (result["advantages"]["groups_gained_signal"], result["advantages"]["groups_became_zero_std"]) == (1, 0)
    assert result["advantages"]["sign_change_frac"] == 1.0

    without = rescore(tmp_path, ["unit_tests_binary"], None, None, "grpo", problems=None, progress=False)
    assert without["rows_without_problem"] == 2
    assert without["new"]["unit_tests_binary"]["frac_unscorable"] == 1.0  # NaN, not a silent 0
    assert without["disagreement"]["rows"] == 2 and without["disagreement"]["examples"][0]["new"] is None
    assert "2 rows had no problem row" in format_rescore_report(without)


def test_a_raising_reward_is_reported_per_step(tmp_path, monkeypatch):
    (tmp_path / "flaky_rewards.py").write_text(
        "def flaky(prompts, completions, **columns):\n    raise RuntimeError('grader down')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("flaky_rewards", None)
    save_run(tmp_path / "run", HAND)
    result = rescore(tmp_path / "run", ["flaky_rewards:flaky", "format"], [1.0, 1.0], None, "dr_grpo",
                     progress=False)
    assert set(result["errors"]["flaky"]) == {"0", "1"} and "grader down" in result["errors"]["flaky"]["0"]
    assert result["new"]["flaky"]["frac_unscorable"] == 1.0
    assert result["new"]["total"]["mean"] == 5 / 8  # the other reward still counts
    assert "flaky raised on 2 step(s)" in format_rescore_report(result)


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(num_generations=4), "set algo.num_generations=2"),
    (dict(steps=[7]), r"steps=\[7\]"),
    (dict(weights=[1.0, 2.0]), "rewards.weights"),
])
def test_bad_arguments_are_refused(tmp_path, kwargs, match):
    save_run(tmp_path, HAND)
    args = dict(weights=None, num_generations=None) | kwargs
    with pytest.raises(ValueError, match=match):
        rescore(tmp_path, ["format"], args["weights"], args["num_generations"], "grpo",
                steps=kwargs.get("steps"), progress=False)


def test_ragged_groups_are_refused(tmp_path):
    save_run(tmp_path, {0: [*HAND[0], row("e", 2, "x", 0.0, 0.0)]})
    with pytest.raises(ValueError, match="different sizes"):
        rescore(tmp_path, ["format"], progress=False)


def test_language_split(tmp_path):
    """Rows carry the language they ran in (runs since issue 21); older rows take their problem's."""
    cpp, go = "```cpp\nint f() {}\n```", "```go\npackage main\n```"
    save_run(tmp_path, {0: [row("a", 0, cpp, 0.0, 0.0, language="cpp"), row("a", 0, "x", 0.0, 0.0, language="cpp"),
                            row("b", 1, go, 1.0, 0.0, language=""), row("b", 1, go, 1.0, 0.0, language="")]})
    problems = [{"task_id": "a", "language": "cpp"}, {"task_id": "b", "language": "go"}]
    result = rescore(tmp_path, ["format"], None, None, "grpo", problems=problems, progress=False)
    by = result["by_language"]
    assert by["cpp"] == {"rows": 2, "old_mean": 0.0, "new_mean": 0.5, "disagreement_frac": 0.5}
    assert by["go"] == {"rows": 2, "old_mean": 1.0, "new_mean": 1.0, "disagreement_frac": 0.0}
    assert "cpp: 2 rows, total reward 0.000 -> 0.500, 50.0% differ" in format_rescore_report(result)
    save_run(tmp_path / "py", HAND)
    assert rescore(tmp_path / "py", ["format"], None, None, "grpo", progress=False)["by_language"] == {}
