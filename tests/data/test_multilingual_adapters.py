"""Multilingual function tasks (multipl_e / mbxp), stdio tasks in any language (apps, codecontests) and code editing
(canitedit) on the shipped samples; the schema and the prompts of problems in other languages."""

import json
from pathlib import Path

import pytest

from rewards.sandbox.languages import LANGUAGES
from rlwork.config import ConfigError
from rlwork.config.inputs import DATA_LANGUAGES, DataConfig
from rlwork.data.loading import format_instruction, load_problems
from rlwork.data.prompts import load_split
from rlwork.data.schema import MalformedRow, validate_problem

DATA = Path(__file__).parent


def spec(problem: dict) -> dict:
    return json.loads(problem["tests"])


@pytest.fixture(scope="module")
def multipl_e():
    return load_problems("multipl_e", str(DATA / "multipl_e.jsonl"), skip_malformed=True)


def test_multipl_e_sample(multipl_e):
    rows = {p["task_id"]: p for p in multipl_e.dataset}
    assert len(rows) == 18  # 3 problems x 6 languages
    assert [s[1] for s in multipl_e.skipped] == ["ML_9_untyped/cpp", "ML_10_pair/java"]
    assert "type annotations" in multipl_e.skipped[0][2] and "javatuples" in multipl_e.skipped[1][2]
    java = rows["ML_2_count_vowels/java"]
    assert java["entry_point"] == "Problem.countVowels" and java["language"] == "java"  # MultiPL-E's camelCase
    tests = spec(rows["ML_3_running_max/rust"])
    assert tests["signature"] == {"params": ["List[int]"], "returns": "List[int]"} and tests["language"] == "rust"
    assert tests["cases"][0] == {"args": [[1, 3, 2, 5, 4]], "expected": [1, 3, 3, 5, 5]}
    assert rows["ML_3_running_max/rust"]["skipped_asserts"] == 1  # candidate(list(range(3))) is no literal
    assert rows["ML_1_add/cpp"]["reference"].startswith("long add(")  # the target-language reference
    for problem in multipl_e.dataset:
        validate_problem(problem)


# (python tests, cases found): the assert shapes MultiPL-E translates
ASSERT_SHAPES = [
    (["assert f(1) == 2"], [[[1], 2]]),
    (["assert 2 == f(1)"], [[[1], 2]]),  # expected on the left
    (["assert f(1)"], [[[1], True]]),
    (["assert not f(1)"], [[[1], False]]),
    (["assert abs(f(1) - 0.5) < 1e-6"], [[[1], 0.5]]),
    (["assert math.isclose(f(1), 0.5)"], [[[1], 0.5]]),
    ("def check(candidate):\n    assert candidate([1], 'a') == {'a': 1}\n    x = 3\n",
     [[[[1], "a"], {"__dict__": [["a", 1]]}]]),  # values in the tagged form of rewards.sandbox.wire
    (["assert f(x=1) == 2", "assert f(*xs) == 2", "assert g(1) == 2", "assert f(1) > 2"], []),  # none usable
]


@pytest.mark.parametrize("python_tests,cases", ASSERT_SHAPES)
def test_cases_from_the_python_original(python_tests, cases):
    row = {"name": "t", "language": "javascript", "prompt": "function f(x) {\n", "python_tests": python_tests,
           "python_prompt": "def f(x, y=None):\n    pass\n"}
    from rlwork.data.multilingual import multipl_e_row

    if not cases:
        with pytest.raises(MalformedRow, match="asserts is candidate"):
            multipl_e_row(row)
        return
    got = [[c["args"], c["expected"]] for c in spec(multipl_e_row(row))["cases"]]
    assert json.loads(json.dumps(got)) == json.loads(json.dumps(cases))


def test_mbxp_is_the_same_shape(multipl_e):
    mbxp = load_problems("mbxp", str(DATA / "multipl_e.jsonl"), skip_malformed=True)
    assert mbxp.dataset.to_list() == multipl_e.dataset.to_list()


def test_stdio_tasks_in_another_language():
    cc = load_problems("codecontests", str(DATA / "codecontests.jsonl"), language="cpp").dataset
    assert cc[0]["language"] == "cpp" and spec(cc[0])["language"] == "cpp"
    assert cc[0]["reference"].startswith("#include <cstdio>")  # CodeContests' C++ solution
    assert cc[1]["reference"] is None  # only a Python one
    assert "Write a C++ program" in format_instruction(cc[0]) and "```cpp" in format_instruction(cc[0])
    java = load_problems("codecontests", str(DATA / "codecontests.jsonl"), language="java").dataset
    assert java[2]["reference"] == "class Main {}"
    anything = load_problems("apps", str(DATA / "apps.jsonl"), language="any", skip_malformed=True).dataset
    by_id = {p["task_id"]: p for p in anything}
    assert by_id["5001"]["language"] == "any" and "language" not in spec(by_id["5001"])  # the answer decides
    assert "```rust" in format_instruction(by_id["5001"])
    assert by_id["5003"]["language"] is None and spec(by_id["5003"])["kind"] == "call"  # untyped calls: Python
    with pytest.raises(ValueError, match="call-based rows have no types"):
        load_problems("apps", str(DATA / "apps.jsonl"), language="go")
    with pytest.raises(ValueError, match="not a language the sandbox runs"):
        load_problems("codecontests", str(DATA / "codecontests.jsonl"), language="cobol")


def test_canitedit_sample():
    loaded = load_problems("canitedit", str(DATA / "canitedit.jsonl"), skip_malformed=True)
    first = loaded.dataset[0]
    assert first["original"].startswith("def average") and first["reference"].count("return") == 2
    assert first["entry_point"] == "average" and spec(first)["asserts"][0].startswith("assert average([]) == 0.0")
    assert first["prompt"].startswith("Make `average` return 0.0") and "```python\ndef average" in first["prompt"]
    assert "complete revised code" in format_instruction(first)
    reasons = [s[2] for s in loaded.skipped]
    assert "class(es) ['Stack']" in reasons[0] and "numpy" in reasons[1]
    lazy = load_problems("canitedit", str(DATA / "canitedit.jsonl"), skip_malformed=True, instruction="lazy")
    assert lazy.dataset[0]["prompt"].startswith("handle empty lists")


def test_prompts_in_other_languages(multipl_e):
    rows = {p["task_id"]: p for p in multipl_e.dataset}
    text = format_instruction(rows["ML_1_add/go"])
    assert text.startswith("Complete the following Go function.") and "```go\npackage add_test" in text
    assert text.endswith("Answer with the complete code in a single ```go code block.")
    prose = dict(rows["ML_1_add/java"], prompt="Add two numbers.")
    assert "Write a Java function `Problem.add`" in format_instruction(prose)
    assert format_instruction(rows["ML_1_add/python"]).startswith("Complete the following Python function.")


def _problem(**changes) -> dict:
    tests = {"kind": "call", "entry_point": "add", "language": "cpp",
             "signature": {"params": ["int", "int"], "returns": "int"}, "cases": [{"args": [1, 2], "expected": 3}]}
    problem = {"prompt": "Add.", "entry_point": "add", "task_id": "t", "language": "cpp", "tests": json.dumps(tests),
               "reference": "long add(long a, long b) { return a + b; }"}
    problem.update(changes)
    return problem


# (changes, field): problems in other languages are checked with the rewards' own reading of their tests
MALFORMED = [
    ({"language": "cobol"}, "language"),
    ({"language": "rust"}, "language"),  # the tests say cpp
    ({"tests": json.dumps({"kind": "call", "entry_point": "add", "language": "cpp",
                           "cases": [{"args": [1, 2], "expected": 3}]})}, "tests"),  # no signature
    ({"tests": json.dumps({"kind": "assert", "entry_point": "add", "asserts": ["assert add(1, 2) == 3"]})}, "tests"),
    ({"original": 5}, "original"),
]


@pytest.mark.parametrize("changes,field_name", MALFORMED)
def test_schema_of_problems_in_other_languages(changes, field_name):
    with pytest.raises(MalformedRow) as err:
        validate_problem(_problem(**changes))
    assert err.value.field_name == field_name


def test_a_cpp_reference_is_not_read_as_python():
    validate_problem(_problem())  # would not parse as Python


def test_data_config_language():
    assert set(DATA_LANGUAGES) == {"python", "any", *LANGUAGES}
    with pytest.raises(ConfigError, match="data.language"):
        DataConfig(dataset="codecontests", language="cobol")
    with pytest.raises(ConfigError, match="applies to apps and codecontests"):
        DataConfig(dataset="multipl_e", language="cpp")
    cfg = DataConfig(dataset="codecontests", data_files=(str(DATA / "codecontests.jsonl"),), language="rust")
    assert {p["language"] for p in load_split(cfg, "train", 0)} == {"rust"}
