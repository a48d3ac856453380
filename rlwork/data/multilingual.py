"""Adapters for multilingual function tasks (MultiPL-E / MBXP style) and code editing (CanItEdit style).

multipl_e (also mbxp): one row per (problem, language), its prompt in the target language, and the Python original
the tests come from, as MultiPL-E and MBXP build theirs: the original's `assert candidate(args) == expected`
statements give the cases (literal arguments and expected values), its annotations the signature that the sandbox's
harness writes the arguments with (`rewards.harness`). The tests never run in the target language's own assert
code: the expected values stay with the trusted side.

    {"name": "ML_1_add", "language": "cpp", "prompt": "<target-language stub or statement>",
     "python_prompt": "def add(x: int, y: int) -> int: ...",      # the original's signature (annotations)
     "python_tests": "def check(candidate):\\n    assert candidate(1, 2) == 3\\n"   # or ["assert add(1, 2) == 3"]
     "entry_point": "add",                  # optional: the target's name (default: the original's; camelCase
                                            #   in Java, in class Problem, as MultiPL-E names it)
     "canonical_solution": "..."}           # optional: a target-language reference (SFT target)

An assert that is not `candidate(...) == literal` (or `candidate(...)`, `not candidate(...)`, `abs(candidate(...) -
x) < tol`, `math.isclose(candidate(...), x)`) is left out and counted in the problem's `skipped_asserts`; a row with
none left is malformed, as is one whose values the target cannot write (a tuple in Java, an Optional in Go).

canitedit: CanItEdit's rows (`before`, `after`, `tests`, `instruction_descriptive`, `instruction_lazy`): the prompt
is the instruction and the code before; the tests run on the revised code; `original` keeps the code before (for
the optional edit-size reward, `rewards.editing`). The sandbox passes only plain data between test code and program:
rows whose tests build objects of the program's classes, or that import packages beyond the standard library,
are malformed.
"""

from __future__ import annotations

import ast
import json
import sys

from rewards import spec as specs
from rewards.harness.types import Signature
from rewards.sandbox import wire
from rewards.sandbox.languages import LANGUAGES, canonical_language
from rlwork.data.schema import MalformedRow, parse_code


def language_of(value, field_name: str = "language", allow_any: bool = False) -> str:
    """A row's language by name or alias; "any" (the answer picks) where allowed."""
    if allow_any and value == "any":
        return "any"
    lang = canonical_language(value) if isinstance(value, str) else None
    if lang is None:
        raise MalformedRow(field_name, f"{value!r} is not a language the sandbox runs (python, "
                                       f"{', '.join(LANGUAGES)})")
    return lang


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def python_signature(python_prompt: str, entry_point: str | None) -> tuple[str, Signature | None]:
    """(name, signature) of the original's function (`entry_point`, else its last top-level def); signature None
    when an annotation is missing."""
    tree = parse_code(python_prompt, "python_prompt")
    defs = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    found = [n for n in defs if n.name == entry_point] if entry_point else defs[-1:]
    if not found:
        raise MalformedRow("python_prompt", f"defines no function {entry_point or ''}".rstrip())
    fn = found[0]
    params = [a.annotation for a in fn.args.args]
    if fn.returns is None or any(p is None for p in params):
        return fn.name, None
    try:
        return fn.name, Signature(tuple(ast.unparse(p) for p in params), ast.unparse(fn.returns))
    except ValueError as exc:
        raise MalformedRow("python_prompt", str(exc)) from None


def _asserts(python_tests) -> list[ast.stmt]:
    """The assert statements of a HumanEval check(candidate) function or an MBPP list of asserts."""
    if isinstance(python_tests, str):
        tree = parse_code(python_tests, "python_tests")
        checks = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"]
        body = checks[0].body if checks else tree.body
    else:
        body = [s for text in python_tests or [] for s in parse_code(text, "python_tests").body]
    return [s for s in body if isinstance(s, ast.Assert)]


def _call_of(node: ast.expr, names: set[str]) -> ast.Call | None:
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in names and not node.keywords:
        return node
    return None


def _case(stmt: ast.Assert, names: set[str]) -> tuple[list, object] | None:
    """(args, expected) of one assert MultiPL-E translates, else None."""
    test, expected = stmt.test, None
    if isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq):
        left, right = test.left, test.comparators[0]
        call, expected = (_call_of(left, names), right) if _call_of(left, names) else (_call_of(right, names), left)
    elif isinstance(test, ast.Compare) and isinstance(test.ops[0], ast.Lt) and isinstance(test.left, ast.Call) \
            and isinstance(test.left.func, ast.Name) and test.left.func.id == "abs" \
            and isinstance(test.left.args[0], ast.BinOp) and isinstance(test.left.args[0].op, ast.Sub):
        call, expected = _call_of(test.left.args[0].left, names), test.left.args[0].right  # abs(f(x) - y) < tol
    elif isinstance(test, ast.Call) and ast.unparse(test.func) in ("math.isclose", "isclose") and len(test.args) == 2:
        call, expected = _call_of(test.args[0], names), test.args[1]
    elif isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        call, expected = _call_of(test.operand, names), ast.Constant(False)
    else:
        call, expected = _call_of(test, names), ast.Constant(True)
    if call is None or any(isinstance(a, ast.Starred) for a in call.args):
        return None
    try:
        return [ast.literal_eval(a) for a in call.args], ast.literal_eval(expected)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None


def multipl_e_row(row: dict) -> dict:
    lang = language_of(row.get("language"))
    task_id = str(row.get("name") or row.get("task_id") or "")
    py_name, signature = python_signature(row.get("python_prompt") or "", row.get("python_entry_point"))
    if lang in ("cpp", "java", "rust", "go") and signature is None:
        raise MalformedRow("python_prompt", f"the original lacks type annotations, which {lang} tests need "
                                            "(MultiPL-E drops such problems too)")
    entry_point = row.get("entry_point") or (f"Problem.{_camel(py_name)}" if lang == "java" else py_name)
    statements = _asserts(row.get("python_tests"))
    cases = [c for c in (_case(s, {"candidate", py_name}) for s in statements) if c is not None]
    if not cases:
        raise MalformedRow("python_tests", f"none of its {len(statements)} asserts is candidate(...) == literal")
    tests = {"kind": "call", "entry_point": entry_point, "language": lang,
             "cases": [{"args": wire.encode(list(a)), "expected": wire.encode(e)} for a, e in cases]}
    if signature is not None:
        tests["signature"] = signature.to_dict()
    try:
        specs.parse(json.dumps(tests))  # values against the signature, types the target lacks
    except ValueError as exc:
        raise MalformedRow("tests", str(exc)) from None
    prompt = row.get("prompt") or ""
    return {"prompt": prompt, "entry_point": entry_point, "task_id": task_id, "language": lang,
            "tests": json.dumps(tests), "reference": row.get("canonical_solution") or None,
            "skipped_asserts": len(statements) - len(cases)}


def _imports(tree: ast.Module) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found


def _test_body(tests: str) -> str:
    """CanItEdit's test code, unwrapped from its `if True:` block (a marker comment may precede it)."""
    tree = parse_code(tests, "tests")
    if len(tree.body) == 1 and isinstance(tree.body[0], ast.If) and isinstance(tree.body[0].test, ast.Constant) \
            and tree.body[0].test.value is True:
        return "\n".join(ast.unparse(s) for s in tree.body[0].body) + "\n"
    return tests


def canitedit_row(row: dict, instruction: str = "descriptive") -> dict:
    if instruction not in ("descriptive", "lazy"):
        raise ValueError(f"canitedit instruction={instruction!r}: use 'descriptive' or 'lazy'")
    before, after, tests = row.get("before") or "", row.get("after") or "", row.get("tests") or ""
    text = row.get(f"instruction_{instruction}")
    if not isinstance(text, str) or not text.strip():
        raise MalformedRow("prompt", f"instruction_{instruction} is missing")
    after_tree, body = parse_code(after, "after"), _test_body(tests)
    test_tree = parse_code(body, "tests")
    outside = sorted(m for m in _imports(test_tree) | _imports(after_tree) if m not in sys.stdlib_module_names)
    if outside:
        raise MalformedRow("tests", f"needs {outside}, beyond the standard library the sandbox offers")
    classes = {n.name for n in after_tree.body if isinstance(n, ast.ClassDef)}
    functions = [n.name for n in after_tree.body if isinstance(n, ast.FunctionDef)]
    used = {n.id for n in ast.walk(test_tree) if isinstance(n, ast.Name)}
    if used & classes:
        raise MalformedRow("tests", f"they build objects of the program's class(es) {sorted(used & classes)}; the "
                                    "sandbox passes only plain data between test code and program")
    called = [n.func.id for n in ast.walk(test_tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    entry = next((name for name in called if name in functions), None)
    if entry is None:
        raise MalformedRow("entry_point", "the tests call no top-level function of the revised code")
    prompt = f"{text.strip()}\n\n```python\n{before.rstrip()}\n```"
    return {"prompt": prompt, "entry_point": entry, "task_id": str(row.get("full_name") or row.get("id")),
            "tests": json.dumps({"kind": "assert", "entry_point": entry, "asserts": [body]}),
            "reference": after, "original": before, "language": "python"}
