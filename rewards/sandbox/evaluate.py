"""Programs + test specs -> detailed outcomes. Verdicts are decided here or in the test host, never in the sandbox.

- call:   the program answers each `args` with plain data; the parent compares with `expected`.
- stdio:  one sandboxed run per case; the parent compares captured stdout with the expected stdout.
- assert: the dataset's test code runs in the program's trusted supervisor, outside the program's process,
          namespaces and uid, against proxies that forward each call to the program (`_tester.py`).
Expected values, test code and reference solutions never enter the sandbox.
"""

import logging

from rewards import spec as specs
from rewards.sandbox import wire
from rewards.sandbox.pool import Job, Limits, Sandbox
from rewards.sandbox.verdict import Outcome, make_outcome, stdout_matches, values_equal

log = logging.getLogger("rewards.sandbox")


class Evaluator:
    """Runs programs against test specs in the sandbox and returns one `Outcome` per program.

    Example:
        >>> ev = Evaluator()                                                     # doctest: +SKIP
        >>> spec = specs.parse('{"kind": "call", "entry_point": "f", "cases": [{"args": [2], "expected": 4}]}')
        >>> ev.evaluate(["def f(x):\\n    return x * x\\n"], [spec])[0].category  # doctest: +SKIP
        'passed'
    """

    def __init__(self, sandbox: Sandbox | None = None, limits: Limits | None = None, **sandbox_kw):
        self.sandbox = sandbox or Sandbox(**sandbox_kw)
        self.limits = limits or Limits()
        self.stats = {"programs": 0, "sandbox_errors": 0}

    def close(self) -> None:
        self.sandbox.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def evaluate(self, programs: list[str], tests: list) -> list[Outcome]:
        """programs[i] is run against tests[i] (a spec or the JSON string of one)."""
        parsed = [t if isinstance(t, specs.CallSpec | specs.StdioSpec | specs.AssertSpec) else specs.parse(t)
                  for t in tests]
        jobs, owner = [], []
        for p, (code, sp) in enumerate(zip(programs, parsed, strict=True)):
            if isinstance(sp, specs.StdioSpec):
                for case in sp.cases:
                    jobs.append(Job(code=code, mode="stdio", stdin=case.stdin, limits=self.limits))
                    owner.append(p)
            elif isinstance(sp, specs.CallSpec):
                calls = [(i, wire.encode(list(c.args))) for i, c in enumerate(sp.cases)]
                jobs.append(Job(code=code, mode="call", entry_point=sp.entry_point, calls=calls, limits=self.limits))
                owner.append(p)
            else:
                tests = {"entry_point": sp.entry_point, "setup": sp.setup, "code": sp.code,
                         "asserts": list(sp.asserts), "total": sp.num_tests}
                jobs.append(Job(code=code, mode="assert", entry_point=sp.entry_point, tests=tests, limits=self.limits))
                owner.append(p)
        runs = self.sandbox.run(jobs)
        outcomes = self._assemble(parsed, owner, runs)
        self.stats["programs"] += len(outcomes)
        self.stats["sandbox_errors"] += sum(o.sandbox_error for o in outcomes)
        return outcomes

    def _assemble(self, parsed, owner, runs) -> list[Outcome]:
        per_program = [[] for _ in parsed]
        for i, p in enumerate(owner):
            per_program[p].append(i)
        out = []
        for p, sp in enumerate(parsed):
            idx = per_program[p]
            first = runs[idx[0]]
            kw = dict(stdout=first.stdout, stderr=first.stderr, elapsed=sum(runs[i].elapsed for i in idx))
            if isinstance(sp, specs.StdioSpec):
                tests = [_stdio_verdict(runs[i], c) for i, c in zip(idx, sp.cases, strict=True)]
                details = [runs[i].detail for i in idx if runs[i].category != "ok"]
                out.append(make_outcome(tests, details[0] if details else "", **kw))
            elif isinstance(sp, specs.CallSpec):
                out.append(make_outcome(_call_verdicts(first, sp), first.detail, **kw))
            else:
                out.append(make_outcome(*_assert_verdicts(first, sp), **kw))
        return out


def _missing(run) -> str:
    return run.category if run.category != "ok" else "runtime_error"


def _stdio_verdict(run, case) -> str:
    if run.category != "ok":
        return run.category
    return "passed" if stdout_matches(run.stdout, case.stdout) else "wrong_answer"


def _call_verdicts(run, sp) -> list[str]:
    tests = []
    for i, case in enumerate(sp.cases):
        r = run.results.get(i)
        if r is None:
            tests.append(_missing(run))
        elif "exc" in r:
            tests.append("memory" if r["exc"] == "MemoryError" else "runtime_error")
        else:
            try:
                got = wire.decode(r["ok"])
            except (ValueError, TypeError, KeyError):
                tests.append("wrong_answer")
                continue
            tests.append("passed" if values_equal(got, case.expected) else "wrong_answer")
    return tests


def _assert_verdicts(run, sp) -> tuple[list[str], str]:
    n, verdict = sp.num_tests, run.verdict
    if run.names is None:
        return [_missing(run)] * n, run.detail
    if verdict is None:
        cat = "sandbox_error" if run.category == "sandbox_error" else "timeout"
        return [cat] * n, run.detail or "the test code did not finish"
    tests = list(verdict["tests"])[:n] + ["sandbox_error"] * max(0, n - len(verdict["tests"]))
    return tests, verdict.get("detail") or run.detail
