import json

import pytest

from rewards import spec
from rewards.unit_tests import UnitTestReward, evaluate, summarise

CALL = spec.dumps(spec.CallSpec("sq", (spec.CallCase([3], 9), spec.CallCase([-2], 4))))
STDIO = spec.dumps(spec.StdioSpec((spec.StdioCase("3\n", "9\n"), spec.StdioCase("-2\n", "4\n"))))
ASSERT = json.dumps({"kind": "assert", "entry_point": "sq", "asserts": ["assert sq(3) == 9", "assert sq(-2) == 4"]})
CHECK = json.dumps({"kind": "assert", "entry_point": "sq",
                    "code": "def check(candidate):\n    assert candidate(3) == 9\n    assert candidate(-2) == 4\n"})
GOOD = "```python\ndef sq(x):\n    return x * x\n```"
HALF = "```python\ndef sq(x):\n    return 9\n```"
STDIO_GOOD = "```python\nx = int(input())\nprint(x * x)\n```"

# (completion, tests column value, fraction reward, binary reward)
CASES = [
    (GOOD, CALL, 1.0, 1.0),  # call/expected, correct
    (HALF, CALL, 0.5, 0.0),  # call/expected, one of two
    (STDIO_GOOD, STDIO, 1.0, 1.0),  # stdin/stdout
    ("```python\nprint(9)\n```", STDIO, 0.5, 0.0),  # stdio, one of two
    (GOOD, ASSERT, 1.0, 1.0),  # MBPP-style asserts
    (HALF, ASSERT, 0.5, 0.0),  # per-assert credit
    (GOOD, CHECK, 1.0, 1.0),  # HumanEval-style check
    (HALF, CHECK, 0.0, 0.0),  # check() is all or nothing
    ("```python\ndef sq(x)\n    return x\n```", CALL, 0.0, 0.0),  # syntax error
    ("```python\ndef sq(x):\n    while True:\n        pass\n```", CALL, 0.0, 0.0),  # timeout is a failure
    ("no code at all", CALL, 0.0, 0.0),  # nothing to run
    (GOOD, None, None, None),  # no spec: does not apply
    (GOOD, "{not json", None, None),  # malformed spec: None, counted
]


@pytest.fixture(scope="module")
def rewards_pair():
    frac, binary = UnitTestReward(timeout=2.0), UnitTestReward(binary=True, timeout=2.0)
    yield frac, binary
    frac.close()
    binary.close()


def test_reward_table_in_one_batch(rewards_pair):
    frac, binary = rewards_pair
    completions = [c[0] for c in CASES]
    tests = [c[1] for c in CASES]
    logged = {}
    got = frac(["p"] * len(CASES), completions, tests=tests, log_metric=logged.__setitem__)
    assert got == [c[2] for c in CASES]
    assert binary(["p"] * len(CASES), completions, tests=tests) == [c[3] for c in CASES]
    assert frac.stats["bad_specs"] == 1 and frac.stats["sandbox_errors"] == 0
    outcomes = frac.last_outcomes
    assert outcomes[9].category == "timeout" and outcomes[8].category == "syntax_error"
    assert outcomes[1].tests == ["passed", "wrong_answer"] and outcomes[11] is None
    assert logged["sandbox/timeout_frac"] == pytest.approx(1 / 11)


def test_missing_column_does_not_apply(rewards_pair):
    assert rewards_pair[0](["p"], [GOOD]) == [None]


def test_conversational_completions(rewards_pair):
    msgs = [[{"role": "assistant", "content": GOOD}]]
    assert rewards_pair[0](["p"], msgs, tests=[CALL]) == [1.0]


def test_sandbox_error_is_none_and_counted():
    reward = UnitTestReward(timeout=2.0)
    reward.evaluator.sandbox.start()
    reward.evaluator.sandbox.proc.kill()  # our side breaks: the row is unscorable, not the model's failure
    reward.evaluator.sandbox.proc.wait()
    try:
        assert reward(["p"], [GOOD], tests=[CALL]) == [None]
        assert reward.stats["sandbox_errors"] == 1
        assert reward(["p"], [GOOD], tests=[CALL]) == [1.0]  # and it recovers
    finally:
        reward.close()


def test_evaluate_api_and_summary():
    outs = evaluate([GOOD, HALF], [CALL, CHECK])
    assert [o.category for o in outs] == ["passed", "wrong_answer"]
    m = summarise(outs)
    assert m["sandbox/passed_frac"] == 0.5 and m["sandbox/tests_passed_frac"] == 0.5


STUB = 'def sq(x):\n    """Square x."""\n'


@pytest.mark.parametrize("prompt,completion,expected", [
    (STUB, "    return x * x\n", 1.0),  # a base model continues the stub (HumanEval's convention)
    (STUB, "    return 9", 0.5),  # no trailing newline: still one program
    (STUB, GOOD, 1.0),  # a fenced answer stands alone
    (STUB, "def sq(x):\n    return x * x\n", 1.0),  # an unfenced full definition stands alone
    ("<|user|>\n" + STUB + "<|assistant|>\n", "    return x * x\n", 0.0),  # a chat prompt is not code to continue
    ('def other(x):\n    """Square x."""\n', "    return x * x\n", 0.0),  # the stub must define the entry point
    (STUB, [{"role": "assistant", "content": "    return x * x\n"}], 1.0),  # conversational completion text
])
def test_completions_continue_a_code_stub_prompt(rewards_pair, prompt, completion, expected):
    assert rewards_pair[0]([prompt], [completion], tests=[CALL]) == [expected]
    assert evaluate([completion], [CALL], prompts=[prompt])[0].fraction == expected


# Datasets in their own layouts, as TRL hands them to a reward (every column but the prompt, column-wise).
HUMANEVAL_COLUMNS = {"task_id": ["HumanEval/x"], "entry_point": ["sq"], "canonical_solution": ["    return x * x\n"],
                     "test": ["def check(candidate):\n    assert candidate(3) == 9\n    assert candidate(-2) == 4\n"]}
MBPP_COLUMNS = {"task_id": [7], "code": ["def sq(x):\n    return x * x"], "test_setup_code": [""],
                "test_list": [["assert sq(3) == 9", "assert sq(-2) == 4"]]}
MBPP_SANITIZED_COLUMNS = {"task_id": [7], "test_imports": [["import math"]],
                          "test_list": [["assert sq(3) == 9", "assert math.isclose(sq(-2), 4)"]]}
ACECODE_COLUMNS = {"id": ["a1"], "test_cases": [["assert sq(3) == 9", "assert sq(-2) == 4"]]}


@pytest.mark.parametrize("columns", [HUMANEVAL_COLUMNS, MBPP_COLUMNS, MBPP_SANITIZED_COLUMNS, ACECODE_COLUMNS],
                         ids=["humaneval", "mbpp", "mbpp_sanitized", "acecode"])
def test_native_dataset_columns_are_scored_without_a_tests_column(rewards_pair, columns):
    frac, _ = rewards_pair
    assert frac(["def sq(x):\n"], [GOOD], **columns) == [1.0]
    assert frac(["def sq(x):\n"], [HALF], **columns) == [0.5 if "test_list" in columns or "test_cases" in columns
                                                         else 0.0]  # check() is all or nothing


def test_a_batch_without_tests_scores_none_and_says_so_once(rewards_pair, caplog):
    import rewards.unit_tests as unit_tests

    frac, _ = rewards_pair
    unit_tests._WARNED_NO_TESTS.discard(frac.__name__)
    columns = {"task_id": ["a", "b"], "tests_json": ["{}", "{}"]}  # the tests are under another name
    with caplog.at_level("WARNING", logger="rewards.unit_tests"):
        assert frac(["p", "p"], [GOOD, GOOD], **columns) == [None, None]
        assert frac(["p", "p"], [GOOD, GOOD], **columns) == [None, None]
    said = [r.getMessage() for r in caplog.records if "no row of this batch has tests" in r.getMessage()]
    assert len(said) == 1
    assert "'tests'" in said[0] and "test, entry_point" in said[0] and "test_list" in said[0]
    assert "['task_id', 'tests_json']" in said[0]
