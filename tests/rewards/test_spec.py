import json

import pytest

from rewards import spec

VALID = [
    ('{"kind": "call", "entry_point": "add", "cases": [{"args": [1, 2], "expected": 3}]}',
     spec.CallSpec("add", (spec.CallCase([1, 2], 3),))),  # plain call case
    ('{"kind": "call", "entry_point": "f", "cases": [{"args": [{"__tuple__": [1]}], "expected": {"__set__": [2]}}]}',
     spec.CallSpec("f", (spec.CallCase([(1,)], {2}),))),  # tagged tuple argument, set result
    ('{"kind": "call", "entry_point": "f", "cases": [{"args": [], "expected": {"a": 1}}]}',
     spec.CallSpec("f", (spec.CallCase([], {"a": 1}),))),  # plain JSON object is a str-keyed dict
    ('{"kind": "stdio", "cases": [{"stdin": "1 2\\n", "stdout": "3\\n"}]}',
     spec.StdioSpec((spec.StdioCase("1 2\n", "3\n"),))),  # stdin/stdout
    ('{"kind": "assert", "entry_point": "add", "code": "def check(candidate):\\n    assert candidate(1, 2) == 3\\n"}',
     spec.AssertSpec("add", code="def check(candidate):\n    assert candidate(1, 2) == 3\n")),  # HumanEval style
    ('{"kind": "assert", "entry_point": "add", "asserts": ["assert add(1, 2) == 3"], "setup": "import math"}',
     spec.AssertSpec("add", asserts=("assert add(1, 2) == 3",), setup="import math")),  # MBPP style
]

INVALID = [
    ("not json", "not valid JSON"),  # garbage
    ('[1, 2]', "JSON object"),  # not an object
    ('{"kind": "fuzz"}', "tests.kind"),  # unknown kind
    ('{"kind": "call", "entry_point": "1x", "cases": [{"args": [], "expected": 1}]}', "tests.entry_point"),  # bad name
    ('{"kind": "call", "entry_point": "f", "cases": []}', "tests.cases"),  # no cases
    ('{"kind": "call", "entry_point": "f", "cases": [{"args": 1, "expected": 1}]}', "wrap a single argument"),  # args
    ('{"kind": "call", "entry_point": "f", "cases": [{"args": []}]}', "needs 'args'"),  # missing expected
    ('{"kind": "call", "entry_point": "f", "cases": [{"args": [], "expected": {"__float__": "x"}}]}',
     "malformed tagged value"),  # bad tag
    ('{"kind": "stdio", "cases": [{"stdin": 1, "stdout": ""}]}', "cases[0].stdin"),  # non-string stdin
    ('{"kind": "assert", "entry_point": "f"}', "exactly one of 'code'"),  # neither code nor asserts
    ('{"kind": "assert", "entry_point": "f", "code": "assert f(1)"}', "must define check"),  # code without check
    ('{"kind": "assert", "entry_point": "f", "asserts": [""]}', "non-empty string"),  # empty assert
    ('{"kind": "assert", "entry_point": "f", "asserts": ["assert f()"], "setup": 3}', "tests.setup"),  # bad setup
]


@pytest.mark.parametrize("text,expected", VALID)
def test_parse_valid(text, expected):
    assert spec.parse(text) == expected


@pytest.mark.parametrize("text,message", INVALID)
def test_parse_invalid_names_the_field(text, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        spec.parse(text)


@pytest.mark.parametrize("_text,parsed", VALID)
def test_dumps_round_trips(_text, parsed):
    assert spec.parse(spec.dumps(parsed)) == parsed
    json.loads(spec.dumps(parsed))  # plain JSON


def test_dumps_tags_tuples_and_nonfinite_floats():
    s = spec.dumps(spec.CallSpec("f", (spec.CallCase([(1, 2)], float("inf")),)))
    assert '{"__tuple__": [1, 2]}' in s and '{"__float__": "inf"}' in s


# (spec, the names that become proxies of the program)
DECLARED = [
    (spec.AssertSpec("add", asserts=("assert add(1, 2) == 3",)), ("add",)),  # the entry point only
    (spec.AssertSpec("find_zero", code="def check(candidate):\n    import math\n    x = candidate([1, 2])\n"
                                      "    assert math.fabs(poly([1, 2], x)) < 1e-4\n"), ("find_zero", "poly")),
    (spec.AssertSpec("f", asserts=("assert abs(f(1) - 2) < 1e-9", "assert all(map(f, [1]))")), ("f",)),  # builtins
    (spec.AssertSpec("f", setup="def _ref(x):\n    return x\nfrom math import isclose",
                     asserts=("assert isclose(f(1), _ref(1))",)), ("f",)),  # setup names
    (spec.AssertSpec("f", code="def check(candidate):\n    def helper(y):\n        return y\n"
                               "    assert helper(candidate(1)) == [x for x in [1]][0]\n"), ("f",)),  # test's own
    (spec.AssertSpec("f", code="def check(candidate):\n    assert g(candidate(1))\n", names=("h",)), ("f", "h")),
]


@pytest.mark.parametrize("test_spec,names", DECLARED)
def test_declared_names(test_spec, names):
    assert test_spec.declared_names == names


def test_names_round_trip_and_validation():
    s = spec.AssertSpec("f", asserts=("assert f(1) == g(1)",), names=("g",))
    assert spec.parse(spec.dumps(s)) == s
    with pytest.raises(ValueError, match="is a builtin"):
        spec.AssertSpec("f", asserts=("assert f(1)",), names=("abs",))
    with pytest.raises(ValueError, match="tests.names"):
        spec.parse('{"kind": "assert", "entry_point": "f", "asserts": ["assert f(1)"], "names": "g"}')
