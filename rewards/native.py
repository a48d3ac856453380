"""Datasets' own test columns -> our `tests` spec (rewards.spec), for rows that carry no `tests` column.

A TRL user passes a dataset as it comes, and TRL hands every column but the prompt to the reward. These layouts are
read directly (the first that a row has wins):

    humaneval   `test` (code defining check(candidate)) and `entry_point`             HumanEval, HumanEval+
    mbpp        `test_list` (assert statements), `test_setup_code` or `test_imports`  MBPP, MBPP (sanitized), MBPP+
    acecode     `test_cases` (assert statements)                                       AceCode

For assert lists the entry point is the first function the asserts call that the row's reference solution (`code`)
defines, or the first one called when there is no reference. rlwork's dataset adapters (rlwork.data.adapters) use
the same functions, so a row scores the same whether it went through an adapter or straight to the reward.
"""

import ast
from collections.abc import Iterable, Mapping

LAYOUTS = {"humaneval": ("test", "entry_point"), "mbpp": ("test_list",), "acecode": ("test_cases",)}
"""Layout name -> the columns a row needs for it."""


def humaneval_spec(test: str, entry_point: str) -> dict:
    """HumanEval's `test` (defines check(candidate)) as an assert spec that calls check(entry_point)."""
    return {"kind": "assert", "entry_point": entry_point, "code": test}


def assert_spec(entry_point: str, asserts: Iterable[str], setup: str = "") -> dict:
    """A list of assert statements (MBPP, AceCode) as an assert spec; blank statements are dropped."""
    spec = {"kind": "assert", "entry_point": entry_point, "asserts": [a for a in asserts if a.strip()]}
    if setup.strip():
        spec["setup"] = setup
    return spec


def called_names(asserts: Iterable[str]) -> list[str]:
    """Names of the functions the statements call, in order of first call. Raises SyntaxError for bad code."""
    names: list[str] = []
    for statement in asserts:
        for node in ast.walk(ast.parse(statement)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id not in names:
                names.append(node.func.id)
    return names


def top_level_names(code: str) -> set[str] | None:
    """Functions, classes, assignments and imports at the top of `code`; None when it is not Python."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return None
    names = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def entry_point_from_asserts(asserts: Iterable[str], reference: str | None) -> str:
    """The first function the asserts call that the reference defines (the first called, without a usable
    reference). Raises ValueError when there is none."""
    called = called_names(asserts)
    defined = top_level_names(reference) if isinstance(reference, str) and reference.strip() else None
    candidates = called if defined is None else [n for n in called if n in defined]
    if not candidates:
        raise ValueError("cannot tell which function the asserts test")
    return candidates[0]


def layout_of(row: Mapping) -> str | None:
    """The first native layout whose columns the row has (non-empty), or None."""
    for name, needed in LAYOUTS.items():
        if all(row.get(c) for c in needed):
            return name
    return None


def spec_from_row(row: Mapping) -> dict | None:
    """The test spec that a row's native columns describe, or None when it has none of the layouts.

    Raises ValueError (or SyntaxError) when the columns are there but unusable.

    Example:
        >>> spec_from_row({"test_list": ["assert add(1, 2) == 3"], "code": "def add(a, b):\\n    return a + b"})
        {'kind': 'assert', 'entry_point': 'add', 'asserts': ['assert add(1, 2) == 3']}
    """
    layout = layout_of(row)
    if layout == "humaneval":
        return humaneval_spec(row["test"], row["entry_point"])
    if layout is None:
        return None
    asserts = list(row["test_list"] if layout == "mbpp" else row["test_cases"])
    setup = (row.get("test_setup_code") or "\n".join(row.get("test_imports") or [])) if layout == "mbpp" else ""
    entry_point = row.get("entry_point") or entry_point_from_asserts(asserts, row.get("code"))
    return assert_spec(entry_point, asserts, setup)


def rows_of(columns: Mapping[str, list], n: int) -> list[dict]:
    """TRL's column-wise keyword arguments (one list of n values per column) as n row dicts; other keyword
    arguments (TRL's `trainer_state`, `log_metric`) are left out."""
    lists = {k: v for k, v in columns.items() if isinstance(v, list | tuple) and len(v) == n}
    return [{k: v[i] for k, v in lists.items()} for i in range(n)]


def describe() -> str:
    """One line naming the layouts and their columns, for messages."""
    return "; ".join(f"{name}: {', '.join(cols)}" for name, cols in LAYOUTS.items())
