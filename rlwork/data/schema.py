"""The shared problem schema, and the validation every loaded row passes.

A problem is a row with `prompt` (str, or TRL conversational messages), `entry_point` ("" for stdin/stdout
programs), `tests` (a JSON string: kind "call", "stdio" or "assert"; see `validate_problem`), `task_id`
and optionally `reference` (an SFT target; never shown to the sandbox), `language` (python by default; cpp, java,
javascript, rust, go; "any" for stdio tasks the answer's language decides) and `original` (code editing: the code
before the edit).
"""

from __future__ import annotations

import ast
import json
from collections.abc import Iterable

from rewards import spec as specs
from rewards.sandbox.languages import LANGUAGES, canonical_language


class DataError(ValueError):
    """The data a config names cannot be used (no such dataset or file, a malformed row, a missing column); the
    message names the config key or the row, and the fix. The rlwork commands print it without a traceback."""


class MalformedRow(ValueError):
    def __init__(self, field_name: str, reason: str):
        super().__init__(f"{field_name}: {reason}")
        self.field_name, self.reason = field_name, reason


def parse_code(code: str, field_name: str) -> ast.Module:
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


def code_defining(candidates: Iterable[str | None]) -> list[set[str]]:
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
    language = _language(problem)
    if problem.get("original") is not None and not isinstance(problem["original"], str):
        raise MalformedRow("original", "must be the code before the edit, as a string")
    reference = problem.get("reference")
    if reference and language in ("python", "any"):
        parse_code(reference, "reference")
    try:
        spec = json.loads(problem.get("tests") or "")
    except (TypeError, json.JSONDecodeError):
        raise MalformedRow("tests", "missing or not a JSON string") from None
    _validate_tests(spec, entry_point)
    if language not in ("python", "any") or (isinstance(spec, dict) and ("language" in spec or "signature" in spec)):
        _validate_multilingual(spec, language)
        return
    if entry_point:
        defined = code_defining([reference, prompt if isinstance(prompt, str) else None])
        if defined and not any(entry_point in names for names in defined):
            raise MalformedRow("entry_point", f"{entry_point!r} is not defined at top level in the reference/prompt")


def _language(problem: dict) -> str:
    value = problem.get("language")
    if value is None or value == "any":
        return value or "python"
    lang = canonical_language(value) if isinstance(value, str) else None
    if lang is None:
        raise MalformedRow("language", f"{value!r} is not one of python, {', '.join(LANGUAGES)} or 'any'")
    return lang


def _validate_multilingual(spec: dict, language: str) -> None:
    """The tests of a problem in another language, read as the rewards read them (types, values, signature)."""
    try:
        parsed = specs.parse(spec)
    except ValueError as exc:
        raise MalformedRow("tests", str(exc)) from None
    tests_language = getattr(parsed, "language", None)
    if language not in ("python", "any") and tests_language not in (None, language):
        raise MalformedRow("language", f"{language!r} but the tests say {tests_language!r}")
    if parsed.kind == "assert" and language not in ("python", "any"):
        raise MalformedRow("tests", f"assert-style tests are Python code; a {language} problem needs call or stdio")


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
        if "check" not in _top_level_names(parse_code(spec["code"], "tests")):
            raise MalformedRow("tests", "assert 'code' must define check(candidate)")
    elif not spec["asserts"] or not all(isinstance(a, str) for a in spec["asserts"]):
        raise MalformedRow("tests", "'asserts' must be a non-empty list of strings")
    for statement in spec.get("asserts", []):
        parse_code(statement, "tests")
    if spec.get("setup"):
        parse_code(spec["setup"], "tests")
