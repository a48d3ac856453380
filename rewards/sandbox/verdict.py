"""Verdicts, decided in the trusted parent on plain decoded data (see `rewards.spec` for the rules)."""

import math
from dataclasses import dataclass, field

CATEGORIES = ("passed", "wrong_answer", "runtime_error", "syntax_error", "timeout", "memory", "output_limit",
              "sandbox_error")
REL_TOL, ABS_TOL = 1e-6, 1e-9


@dataclass
class Outcome:
    """Detailed result of one program against its tests."""

    passed: int
    total: int
    tests: list[str]
    """One category per test: "passed" or the failure category."""
    category: str
    """"passed" if every test passed, else the first failure category (sandbox_error wins)."""
    detail: str = ""
    stdout: str = ""
    stderr: str = ""
    elapsed: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        return self.passed / self.total if self.total else 0.0

    @property
    def sandbox_error(self) -> bool:
        return self.category == "sandbox_error"


def make_outcome(tests: list[str], detail: str = "", **kw) -> Outcome:
    failures = [t for t in tests if t != "passed"]
    category = "sandbox_error" if "sandbox_error" in failures else (failures[0] if failures else "passed")
    return Outcome(passed=len(tests) - len(failures), total=len(tests), tests=tests, category=category,
                   detail=detail, **kw)


def values_equal(got, expected) -> bool:
    """Strict structural equality of plain data; floats within tolerance. Never calls user code."""
    te, tg = type(expected), type(got)
    if te is float:
        if tg is int:
            got = float(got)
        elif tg is not float:
            return False
        if math.isnan(expected) or math.isnan(got):
            return math.isnan(expected) and math.isnan(got)
        return math.isclose(got, expected, rel_tol=REL_TOL, abs_tol=ABS_TOL)
    if te is not tg:
        return False
    if te in (list, tuple):
        return len(got) == len(expected) and all(values_equal(g, e) for g, e in zip(got, expected, strict=True))
    if te is dict:
        if len(got) != len(expected):
            return False
        keys = {_key(k): k for k in got}
        return all(_key(k) in keys and values_equal(got[keys[_key(k)]], v) for k, v in expected.items())
    if te in (set, frozenset):
        return {_key(v) for v in got} == {_key(v) for v in expected}
    if te is complex:
        return values_equal(got.real, expected.real) and values_equal(got.imag, expected.imag)
    if te in (int, bool, str, bytes, type(None)):
        return got == expected
    return False  # Unserialisable and anything else: never equal


def _key(v):
    """Type-tagged hashable key, so that {True} and {1} differ."""
    t = type(v)
    if t in (tuple, frozenset):
        items = (_key(x) for x in v)
        return (t.__name__, tuple(items) if t is tuple else frozenset(items))
    if t is float and math.isnan(v):
        return ("float", "nan")
    return (t.__name__, v)


def normalise_stdout(text: str) -> str:
    """Trailing whitespace of each line and trailing empty lines are ignored; everything else counts."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


def stdout_matches(got: str, expected: str) -> bool:
    return normalise_stdout(got) == normalise_stdout(expected)
