"""Datasets' own test columns -> our spec (rewards.native): the reward and the data adapters share these."""

import pytest

from rewards import native

CASES = [
    ({"test": "def check(c):\n    assert c(1) == 1\n", "entry_point": "f"},
     {"kind": "assert", "entry_point": "f", "code": "def check(c):\n    assert c(1) == 1\n"}),  # humaneval
    ({"test_list": ["assert g(1) == 2", "assert f(g(1)) == 3"], "code": "def f(x):\n    return x + 1"},
     {"kind": "assert", "entry_point": "f", "asserts": ["assert g(1) == 2", "assert f(g(1)) == 3"]}),  # the reference
    ({"test_list": ["assert h(1) == 2", " "], "test_setup_code": "import os"},
     {"kind": "assert", "entry_point": "h", "asserts": ["assert h(1) == 2"], "setup": "import os"}),  # first called
    ({"test_list": ["assert h(1) == 2"], "test_imports": ["import math", "import re"]},
     {"kind": "assert", "entry_point": "h", "asserts": ["assert h(1) == 2"], "setup": "import math\nimport re"}),
    ({"test_cases": ["assert k('a') == 'b'"], "id": "x"},
     {"kind": "assert", "entry_point": "k", "asserts": ["assert k('a') == 'b'"]}),  # acecode
    ({"tests": "{}", "question": "q"}, None),  # none of the layouts
    ({"test": "", "entry_point": "f"}, None),  # empty columns are absent
]


@pytest.mark.parametrize("row,expected", CASES)
def test_spec_from_row(row, expected):
    assert native.spec_from_row(row) == expected


def test_unusable_native_columns_raise():
    with pytest.raises(ValueError, match="cannot tell which function"):
        native.spec_from_row({"test_list": ["assert 1 == 1"]})
    with pytest.raises(SyntaxError):
        native.spec_from_row({"test_list": ["assert f(1 =="]})
    with pytest.raises(ValueError, match="cannot tell which function"):  # the reference defines none of them
        native.spec_from_row({"test_list": ["assert f(1) == 1"], "code": "def g():\n    pass"})


def test_rows_of_turns_trl_columns_into_rows():
    columns = {"test": ["a", "b"], "entry_point": ["f", "g"], "trainer_state": object(), "log_metric": print}
    assert native.rows_of(columns, 2) == [{"test": "a", "entry_point": "f"}, {"test": "b", "entry_point": "g"}]
