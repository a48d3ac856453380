"""The shared schema: validate_problem names the malformed field."""

import json

import pytest

from rlwork.data.schema import MalformedRow, validate_problem


def good_problem(**changes) -> dict:
    problem = {"prompt": "Add two numbers.", "entry_point": "add", "task_id": "t1",
               "tests": json.dumps({"kind": "assert", "entry_point": "add", "asserts": ["assert add(1, 2) == 3"]}),
               "reference": "def add(a, b):\n    return a + b\n"}
    problem.update(changes)
    return problem


def as_json(**fields) -> str:
    return json.dumps(fields)


MALFORMED = [
    ({"tests": None}, "tests"),  # missing tests
    ({"tests": "not json"}, "tests"),  # not JSON
    ({"tests": as_json(kind="unit")}, "tests"),  # unknown kind
    ({"tests": as_json(kind="assert", entry_point="add", asserts=["assert add(1, 2 == 3"])}, "tests"),  # syntax
    ({"tests": as_json(kind="assert", entry_point="add", code="def chk(c):\n    pass\n")}, "tests"),  # no check
    ({"tests": as_json(kind="assert", entry_point="add", asserts=[], code="x")}, "tests"),  # both forms
    ({"tests": as_json(kind="call", entry_point="add", cases=[])}, "tests"),  # no cases
    ({"tests": as_json(kind="stdio", cases=[{"stdin": "1"}])}, "entry_point"),  # stdio needs entry_point ""
    ({"entry_point": "sub"}, "entry_point"),  # differs from the tests' entry point
    ({"reference": "def add(a, b)\n    return a + b\n"}, "reference"),  # reference does not parse
    ({"prompt": ""}, "prompt"),  # empty prompt
    ({"prompt": [{"role": "user"}]}, "prompt"),  # message without content
    ({"task_id": ""}, "task_id"),  # no id
]


@pytest.mark.parametrize(("changes", "field_name"), MALFORMED)
def test_validate_problem_names_the_field(changes, field_name):
    with pytest.raises(MalformedRow) as err:
        validate_problem(good_problem(**changes))
    assert err.value.field_name == field_name


def test_unknown_entry_point_is_malformed_where_checkable():
    tests = as_json(kind="call", entry_point="mul", cases=[{"args": [1, 2], "expected": 2}])
    with pytest.raises(MalformedRow, match="'mul' is not defined"):
        validate_problem(good_problem(entry_point="mul", tests=tests))
    validate_problem(good_problem(entry_point="mul", tests=tests, reference=None))  # NL prompt: not checkable
    validate_problem(good_problem())
    validate_problem(good_problem(prompt=[{"role": "user", "content": "Add."}]))
