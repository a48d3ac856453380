"""Per-format adapters on the sample rows in tests/data: test kinds, entry points, and each adapter decision."""

import json
from pathlib import Path

import pytest

from rlwork.data.loading import load_problems
from rlwork.data.schema import validate_problem

DATA = Path(__file__).parent


def sample(name: str) -> str:
    return str(DATA / f"{name}.jsonl")


def spec(problem: dict) -> dict:
    return json.loads(problem["tests"])


# (adapter, rows kept, rows skipped, first row's test kind, first row's entry point, first row's case count)
ADAPTER_CASES = [
    ("mbpp", 3, 0, "assert", "bigger", 3),
    ("mbpp_plus", 3, 0, "call", "bigger", 5),  # base + plus inputs with outputs become call tests
    ("apps", 3, 1, "stdio", "", 3),  # row 5004: class Solution method
    ("codecontests", 3, 0, "stdio", "", 4),  # public + private + generated
    ("acecode", 3, 0, "assert", "clamp", 3),
    ("kodcode", 3, 0, "assert", "square_all", 2),  # one entry per test_* function
]


@pytest.mark.parametrize(("name", "kept", "skipped", "kind", "entry_point", "n_cases"), ADAPTER_CASES)
def test_adapters_on_samples(name, kept, skipped, kind, entry_point, n_cases):
    loaded = load_problems(name, sample(name), skip_malformed=True)
    assert len(loaded.dataset) == kept and len(loaded.skipped) == skipped
    first = loaded.dataset[0]
    tests = spec(first)
    assert tests["kind"] == kind and first["entry_point"] == entry_point
    assert len(tests.get("cases") or tests.get("asserts")) == n_cases
    for problem in loaded.dataset:
        validate_problem(problem)


def test_apps_details():
    loaded = load_problems("apps", sample("apps"), skip_malformed=True)
    by_id = {p["task_id"]: p for p in loaded.dataset}
    assert spec(by_id["5002"])["cases"][0] == {"stdin": "2\nab\ncd\n", "stdout": "cd\nab\n"}  # line lists joined
    call = spec(by_id["5003"])
    assert call["kind"] == "call" and call["cases"][1] == {"args": [12345], "expected": 5}  # [5] unwrapped
    assert loaded.skipped[0][:2] == (3, "5004") and "class Solution" in loaded.skipped[0][2]
    with pytest.raises(ValueError, match=r"row 3 \(task_id='5004'\).*entry_point"):
        load_problems("apps", sample("apps"))


def test_mbpp_plus_without_outputs_falls_back_to_asserts():
    problem = load_problems("mbpp_plus", sample("mbpp_plus")).dataset[2]
    assert spec(problem) == {"kind": "assert", "entry_point": "count_vowels",
                             "asserts": ["assert count_vowels('hello') == 2", "assert count_vowels('') == 0"]}
    assert problem["prompt"].startswith("Write a function to count")


def test_mbpp_setup_and_entry_point():
    problem = load_problems("mbpp", sample("mbpp")).dataset[1]
    assert problem["entry_point"] == "hyp"  # math.isclose is called first but is not defined by the reference
    assert spec(problem)["setup"] == "import math"


def test_codecontests_reference_is_python3_only():
    ds = load_problems("codecontests", sample("codecontests")).dataset
    assert ds[0]["reference"] == "print(2 * int(input()))\n"
    assert ds[2]["reference"] is None  # only a Java solution
    public_only = load_problems("codecontests", sample("codecontests"), test_sets=("public",)).dataset
    assert len(spec(public_only[0])["cases"]) == 1


def test_kodcode_pytest_functions_become_calls():
    problem = load_problems("kodcode", sample("kodcode")).dataset[1]
    tests = spec(problem)
    assert tests["asserts"] == ["test_divides()", "test_zero()"]
    assert "from solution" not in tests["setup"] and "import pytest" in tests["setup"]
    namespace: dict = {}  # the decision holds: reference + setup + each call runs without pytest's runner
    exec(tests["setup"].replace("import pytest\n", "") + "\n" + problem["reference"], namespace)
    namespace["test_divides"]()


def test_kodcode_fixtures_are_malformed(tmp_path):
    row = json.loads(Path(sample("kodcode")).read_text().splitlines()[0])
    row["test"] = "from solution import square_all\n\ndef test_tmp(tmp_path):\n    assert square_all([]) == []\n"
    path = tmp_path / "k.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=r"row 0 \(task_id='Kod_1'\).*tests: test_tmp takes fixtures"):
        load_problems("kodcode", str(path))


def test_humaneval_from_installed_package():
    ds = load_problems("humaneval").dataset
    assert len(ds) == 164
    first = ds[0]
    assert first["task_id"] == "HumanEval/0" and spec(first)["kind"] == "assert"
    assert "def check(candidate)" in spec(first)["code"]
    assert first["reference"].startswith(first["prompt"])
