"""The edit-size reward term of code-editing tasks."""

import pytest

from rewards.editing import EditSizeReward, changed_fraction
from rewards.registry import get_reward

ORIGINAL = "def average(xs):\n    return sum(xs) / len(xs)\n"
SMALL = "def average(xs):\n    if not xs:\n        return 0.0\n    return sum(xs) / len(xs)\n"
REWRITE = "import statistics\n\ndef average(values):\n    return statistics.fmean(values) if values else 0.0\n"

# (completion, original, language, reward)
CASES = [
    (f"```python\n{ORIGINAL}```", ORIGINAL, None, 0.0),  # unchanged
    (f"```python\n{SMALL}```", ORIGINAL, None, -1 / 3),  # two lines added to two: ratio 2*2/6
    (f"```python\n{REWRITE}```", ORIGINAL, None, -1.0),  # nothing kept
    ("no code here", ORIGINAL, None, -1.0),  # no revision: everything replaced
    (f"```python\n{ORIGINAL}```", None, None, None),  # not an editing row: does not apply
    ("```cpp\nint f() { return 2; }\n```", "int f() { return 1; }\n", "cpp", -1.0),  # the row's language's block
]


@pytest.mark.parametrize("completion,original,language,expected", CASES)
def test_edit_size_reward(completion, original, language, expected):
    [got] = EditSizeReward()(["p"], [completion], original=[original], language=[language])
    assert got == (pytest.approx(expected) if expected is not None else None)


def test_edit_size_options():
    assert changed_fraction("abcd", "abXd", "chars") == pytest.approx(0.25)
    assert EditSizeReward(free=0.5)(["p"], [f"```python\n{SMALL}```"], original=[ORIGINAL]) == [0.0]  # within free
    assert EditSizeReward()(["p"], ["x"]) == [None]  # no original column
    with pytest.raises(ValueError, match="unit="):
        EditSizeReward(unit="tokens")
    with pytest.raises(ValueError, match="free="):
        EditSizeReward(free=1.0)
    assert get_reward("edit_size").__name__ == "edit_size" and get_reward("edit_size_chars").unit == "chars"
