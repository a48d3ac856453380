"""Per-format adapters: one source row of a known dataset -> a problem in the shared schema (rlwork.data.schema).

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
- apps, codecontests take `language`: stdio tasks in cpp, java, javascript, rust or go (the tests say so and the
  problem gets a `language` column; CodeContests' C++ and Java solutions become the reference), or "any" (the
  answer's fenced block decides). multipl_e / mbxp (multilingual function tasks) and canitedit (code editing) are in
  `rlwork.data.multilingual`.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Callable, Iterable

from rewards import native
from rlwork.data.multilingual import canitedit_row, language_of, multipl_e_row
from rlwork.data.schema import MalformedRow, code_defining, parse_code


def require(row: dict, *fields: str) -> None:
    """Raise MalformedRow naming the first of `fields` that the row lacks (absent, None or empty text)."""
    for name in fields:
        value = row.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise MalformedRow(name, "missing or empty")


def entry_point_from_asserts(asserts: list[str], reference: str | None) -> str:
    """The first function the asserts call that the reference defines (any called name without one);
    `rewards.native` decides, so the reward reading a raw row picks the same one."""
    try:
        return native.entry_point_from_asserts(asserts, reference)
    except SyntaxError as err:
        raise MalformedRow("tests", f"does not parse as Python ({err.msg}, line {err.lineno})") from None
    except ValueError as err:
        raise MalformedRow("entry_point", str(err)) from None


def assert_tests(entry_point: str, asserts: list[str], setup: str = "") -> str:
    return json.dumps(native.assert_spec(entry_point, asserts, setup))


def _humaneval_row(row: dict) -> dict:
    require(row, "task_id", "prompt", "entry_point", "test")
    entry_point = row["entry_point"]
    solution = row.get("canonical_solution")
    return {"prompt": row["prompt"], "entry_point": entry_point, "task_id": str(row["task_id"]),
            "tests": json.dumps(native.humaneval_spec(row["test"], entry_point)),
            "reference": row["prompt"] + solution if isinstance(solution, str) else None}


def _mbpp_row(row: dict) -> dict:
    require(row, "task_id")
    asserts = [a for a in row.get("test_list") or [] if a.strip()]
    if not asserts:
        raise MalformedRow("tests", "test_list is empty")
    reference = row.get("code")
    entry_point = entry_point_from_asserts(asserts, reference)
    setup = row.get("test_setup_code") or "\n".join(row.get("test_imports") or [])
    return {"prompt": row.get("text") or row.get("prompt") or "", "entry_point": entry_point,
            "tests": assert_tests(entry_point, asserts, setup), "task_id": str(row["task_id"]),
            "reference": reference}


def _json_list(value) -> list:
    return json.loads(value) if isinstance(value, str) else list(value or [])


def _mbpp_plus_row(row: dict) -> dict:
    require(row, "task_id")
    reference = row.get("canonical_solution") or row.get("code")
    prompt = (row.get("prompt") or "").strip().strip('"').strip()
    asserts = row.get("test_list") or ([row["assertion"]] if row.get("assertion") else [])
    entry_point = row.get("entry_point") or entry_point_from_asserts(asserts, reference)
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
        tests = assert_tests(entry_point, asserts, "\n".join(row.get("test_imports") or []))
    else:
        raise MalformedRow("tests", "no test_list/assertion and no inputs with outputs")
    return {"prompt": prompt, "entry_point": entry_point, "tests": tests, "task_id": str(row["task_id"]),
            "reference": reference}


def as_text(value) -> str:
    """APPS/CodeContests give stdin/stdout as a string or as a list of lines."""
    if isinstance(value, list):
        return "\n".join(str(v) for v in value) + "\n"
    if not isinstance(value, str):
        raise MalformedRow("tests", f"stdin/stdout must be text, got {type(value).__name__}")
    return value


def _apps_row(row: dict, language: str = "python") -> dict:
    require(row, "question")
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
    language = language_of(language, allow_any=True)
    if io.get("fn_name"):
        if language not in ("python", "any"):
            raise MalformedRow("tests", f"call-based rows have no types to call a {language} function with")
        language = "python"  # "any" too: without types only Python (and JavaScript) could be called
        entry_point = io["fn_name"]
        unwrap = [y[0] if isinstance(y, list) and len(y) == 1 else y for y in outputs]
        tests = {"kind": "call", "entry_point": entry_point,
                 "cases": [{"args": x, "expected": y} for x, y in zip(inputs, unwrap, strict=True)]}
        defined = code_defining([row.get("starter_code"), reference])
        if any("Solution" in names and entry_point not in names for names in defined):
            raise MalformedRow("entry_point", f"{entry_point!r} is a class Solution method, not a function")
    else:
        entry_point = ""
        tests = {"kind": "stdio", "cases": [{"stdin": as_text(x), "stdout": as_text(y)}
                                            for x, y in zip(inputs, outputs, strict=True)]}
        _stdio_language(tests, language)
    problem = {"prompt": prompt, "entry_point": entry_point, "tests": json.dumps(tests), "task_id": task_id,
               "reference": reference if language in ("python", "any") else None}
    return _with_language(problem, language)


def _stdio_language(tests: dict, language: str) -> None:
    """A stdio spec in `language` ("any": none, the answer's fence decides; python: as before, none)."""
    if language not in ("python", "any"):
        tests["language"] = language


def _with_language(problem: dict, language: str) -> dict:
    if language != "python":
        problem["language"] = language
    return problem


PYTHON3 = 3  # CodeContests' language enum: 1 Python 2, 2 C++, 3 Python 3, 4 Java
CODECONTESTS_LANGUAGES = {"python": PYTHON3, "any": PYTHON3, "cpp": 2, "java": 4}


def _codecontests_row(row: dict, test_sets: Iterable[str] = ("public", "private", "generated"),
                      language: str = "python") -> dict:
    require(row, "name", "description")
    cases = []
    for name in test_sets:
        tests = row.get(f"{name}_tests") or {}
        inputs, outputs = tests.get("input") or [], tests.get("output") or []
        if len(inputs) != len(outputs):
            raise MalformedRow("tests", f"{name}_tests: {len(inputs)} inputs vs {len(outputs)} outputs")
        cases += [{"stdin": as_text(x), "stdout": as_text(y)} for x, y in zip(inputs, outputs, strict=True)]
    if not cases:
        raise MalformedRow("tests", f"no tests in {list(test_sets)}")
    language = language_of(language, allow_any=True)
    solutions = row.get("solutions") or {}
    wanted = CODECONTESTS_LANGUAGES.get(language)
    ours = [s for lang, s in zip(solutions.get("language") or [], solutions.get("solution") or [], strict=False)
            if lang == wanted]
    tests = {"kind": "stdio", "cases": cases}
    _stdio_language(tests, language)
    return _with_language({"prompt": row["description"], "entry_point": "", "task_id": str(row["name"]),
                           "tests": json.dumps(tests), "reference": ours[0] if ours else None}, language)


def _acecode_row(row: dict) -> dict:
    require(row, "id", "question")
    asserts = [a for a in row.get("test_cases") or [] if a.strip()]
    if not asserts:
        raise MalformedRow("tests", "test_cases is empty")
    entry_point = entry_point_from_asserts(asserts, None)
    return {"prompt": row["question"], "entry_point": entry_point, "task_id": str(row["id"]),
            "tests": assert_tests(entry_point, asserts), "reference": None}


def _kodcode_row(row: dict) -> dict:
    require(row, "question_id", "question", "test")
    tree = parse_code(row.get("test") or "", "tests")
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
            "tests": assert_tests(entry_point, test_calls, "\n\n".join(setup)), "reference": row.get("solution")}


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
    "multipl_e": multipl_e_row,
    "mbxp": multipl_e_row,
    "canitedit": canitedit_row,
}
