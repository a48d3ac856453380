"""Verdicts, decided in the trusted parent on plain decoded data (see `rewards.spec` for the rules)."""

from dataclasses import dataclass, field

from rewards.sandbox import wire
from rewards.sandbox._compare import ABS_TOL, MATCHES, REL_TOL, answer_equal, normalise_stdout, stdout_matches

CATEGORIES = ("passed", "wrong_answer", "runtime_error", "syntax_error", "compile_error", "timeout", "memory",
              "output_limit", "protocol_violation", "sandbox_error")
"""Every category a test, program or run can get. compile_error: a compiled language's compiler refused the program
(or ran out of its time, memory or output budget on it). protocol_violation: the program wrote on the sandbox's
result channel itself (forged or malformed frames or records, answers to calls never made); a failure like the
others. sandbox_error: our fault, not the program's; scored None, never 0."""
FAILURES = tuple(c for c in CATEGORIES if c not in ("passed", "sandbox_error"))
__all__ = ["ABS_TOL", "CATEGORIES", "FAILURES", "MATCHES", "REL_TOL", "Outcome", "make_outcome", "normalise_stdout",
           "stdout_matches", "values_equal"]


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
    bad = [t for t in tests if type(t) is not str or t not in CATEGORIES]
    if bad:
        raise ValueError(f"make_outcome: {bad[:3]!r} are not categories; every test's category is one of {CATEGORIES}")
    failures = [t for t in tests if t != "passed"]
    category = "sandbox_error" if "sandbox_error" in failures else (failures[0] if failures else "passed")
    return Outcome(passed=len(tests) - len(failures), total=len(tests), tests=tests, category=category,
                   detail=detail, **kw)


def values_equal(got, expected) -> bool:
    """Strict structural equality of plain data; floats within tolerance. Never calls user code.

    The same rules as the supervisor's comparison of answers (`_compare.answer_equal`), on Python values."""
    try:
        return answer_equal(wire.encode(got), wire.encode(expected))
    except ValueError:  # nested deeper than plain data may be
        return False
