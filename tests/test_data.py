import json
from pathlib import Path

import pytest
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from rlwork.data import (
    ADAPTERS,
    ColumnMapping,
    MalformedRow,
    convert_rows,
    format_instruction,
    instruction_prompt,
    load_problems,
    load_source,
    map_columns,
    render_prompt,
    validate_problem,
)

DATA = Path(__file__).parent / "data"


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


def test_synthetic_adapter():
    train = load_problems("synthetic", n_train=20, n_heldout=5, seed=1).dataset
    heldout = load_problems("synthetic", split="heldout", n_train=20, n_heldout=5, seed=1).dataset
    assert len(train) == 20 and len(heldout) == 5 and spec(train[0])["kind"] == "call"
    with pytest.raises(ValueError, match="'train' or 'heldout'"):
        load_problems("synthetic", split="test")


def test_unknown_adapter_and_missing_source():
    with pytest.raises(ValueError, match=r"unknown dataset adapter 'mbpp\+'; valid: \['acecode'"):
        load_problems("mbpp+", sample("mbpp"))
    assert set(ADAPTERS) == {"humaneval", "mbpp", "mbpp_plus", "apps", "codecontests", "acecode", "kodcode",
                             "synthetic"}
    with pytest.raises(ValueError, match="needs source="):
        load_problems("mbpp")
    with pytest.raises(ValueError, match="do not exist"):
        load_source(str(DATA / "nope.jsonl"))
    with pytest.raises(ValueError, match="dataset='mapped' only"):
        load_problems("mbpp", sample("mbpp"), columns={"prompt": "text", "tests": "test_list"})


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


def test_convert_rows_raises_or_skips_and_counts():
    rows = [good_problem(task_id="a"), good_problem(task_id="b", tests=None), good_problem(task_id="c")]
    with pytest.raises(ValueError, match=r"row 1 \(task_id='b'\): malformed tests"):
        convert_rows(rows, dict, name="demo")
    loaded = convert_rows(rows, dict, skip_malformed=True, name="demo")
    assert loaded.dataset["task_id"] == ["a", "c"]
    assert loaded.skipped == [(1, "b", "tests: missing or not a JSON string")]
    with pytest.raises(ValueError, match="no usable rows"):
        convert_rows(rows[1:2], dict, skip_malformed=True)


def test_column_mapping_jsonl_and_parquet(tmp_path):
    mapping = ColumnMapping(prompt="question", tests="checks", tests_format="asserts", task_id="id",
                            reference="sol", extra={"func_name": "func"})
    from_jsonl = map_columns(load_source(sample("custom")), mapping).dataset
    assert from_jsonl["task_id"] == ["c1", "c2", "c3"] and from_jsonl["entry_point"] == ["inc", "rev", "mag"]
    assert from_jsonl["func_name"] == from_jsonl["entry_point"]
    parquet = tmp_path / "custom.parquet"
    load_source(sample("custom")).to_parquet(str(parquet))
    from_parquet = map_columns(load_source(str(parquet)), mapping).dataset
    assert from_parquet.to_list() == from_jsonl.to_list()
    columns = {"prompt": "question", "tests": "checks", "tests_format": "asserts", "task_id": "id"}
    load_source(sample("custom")).to_parquet(str(tmp_path / "copy.parquet"))
    two_files = load_problems("mapped", [str(parquet), str(tmp_path / "copy.parquet")], columns=columns).dataset
    assert two_files["task_id"] == ["c1", "c2", "c3"] * 2
    with pytest.raises(ValueError, match="mixes parquet and JSON"):
        load_source([sample("custom"), str(parquet)])


def test_column_mapping_other_formats():
    rows = Dataset.from_list([
        {"q": "Sum two ints.", "t": json.dumps({"inputs": ["1 2\n"], "outputs": ["3\n"]})},
        {"q": "Echo.", "t": json.dumps({"inputs": [], "outputs": []})},
    ])
    loaded = map_columns(rows, ColumnMapping(prompt="q", tests="t", tests_format="stdio"), skip_malformed=True)
    assert spec(loaded.dataset[0]) == {"kind": "stdio", "cases": [{"stdin": "1 2\n", "stdout": "3\n"}]}
    assert loaded.dataset[0]["task_id"] == "0" and [s[0] for s in loaded.skipped] == [1]
    with pytest.raises(ValueError, match="lacks"):
        map_columns(rows, ColumnMapping(prompt="question", tests="t"))
    with pytest.raises(ValueError, match="tests_format"):
        ColumnMapping(prompt="q", tests="t", tests_format="yaml")


def test_format_instruction_by_problem_kind():
    stub = good_problem(prompt="def add(a, b):\n    \"\"\"Add.\"\"\"\n", reference=None)
    text = format_instruction(stub)
    assert "```python\ndef add(a, b):" in text and text.endswith("single ```python code block.")
    natural = format_instruction(good_problem())
    assert "Write a Python function `add`" in natural and "assert add(1, 2) == 3" in natural
    stdio = good_problem(entry_point="", tests=as_json(kind="stdio", cases=[{"stdin": "", "stdout": ""}]))
    assert "standard input" in format_instruction(stdio)
    assert instruction_prompt(good_problem(), conversational=True) == [{"role": "user", "content": natural}]
    assert instruction_prompt(good_problem(), conversational=False) == natural


@pytest.fixture(scope="module")
def chat_tokenizer():
    vocab = {"[UNK]": 0, "<eos>": 1}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="<eos>")
    tokenizer.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<eos>\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    )
    return tokenizer


def test_render_prompt_chat_and_plain(chat_tokenizer):
    rendered = render_prompt(chat_tokenizer, "Write add.", chat=True)
    assert rendered == "<|user|>\nWrite add.<eos>\n<|assistant|>\n"
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Write add."}]
    assert render_prompt(chat_tokenizer, messages, chat=True).startswith("<|system|>\nBe brief.<eos>\n<|user|>")
    assert render_prompt(chat_tokenizer, "Write add.", chat=False) == "Write add."
    assert render_prompt(chat_tokenizer, messages, chat=False) == "Be brief.\n\nWrite add."


def test_render_prompt_without_chat_template_errors(chat_tokenizer):
    plain = PreTrainedTokenizerFast(tokenizer_object=chat_tokenizer.backend_tokenizer, unk_token="[UNK]")
    plain.chat_template = None
    with pytest.raises(ValueError, match="no chat_template"):
        render_prompt(plain, "Write add.", chat=True)
