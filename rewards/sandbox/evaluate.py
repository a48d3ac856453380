"""Programs + test specs -> detailed outcomes. Verdicts are decided by the trusted supervisor, never in the sandbox.

- call:   the program answers each `args` with plain data; the supervisor compares each answer with `expected`
          as it arrives (canonical comparison, `_compare.py`) and keeps only the verdict.
- stdio:  one sandboxed run per case; the supervisor compares the captured stdout with the expected stdout.
Programs in other languages (a spec's `language`) are compiled first, once per distinct build and cached
(`native.py`), and their compile failures are compile_error.
- assert: the dataset's test code runs in the program's trusted supervisor, outside the program's process,
          namespaces and uid, against proxies that forward each call to the program (`_tester.py`).
Expected values, test code and reference solutions never enter the sandbox. Identical (program, tests) pairs in
one batch (common in GRPO groups) run once; the copies carry `extra["duplicate_of"]`.
"""

import dataclasses
import logging

from rewards import spec as specs
from rewards.sandbox import native, wire
from rewards.sandbox.compile_cache import CompileCache, Compiled
from rewards.sandbox.jobs import Job, Limits, Run
from rewards.sandbox.pool import Sandbox
from rewards.sandbox.verdict import FAILURES, Outcome, make_outcome

log = logging.getLogger("rewards.sandbox")


class Evaluator:
    """Runs programs against test specs in the sandbox and returns one `Outcome` per program.

    Example:
        >>> ev = Evaluator()                                                     # doctest: +SKIP
        >>> spec = specs.parse('{"kind": "call", "entry_point": "f", "cases": [{"args": [2], "expected": 4}]}')
        >>> ev.evaluate(["def f(x):\\n    return x * x\\n"], [spec])[0].category  # doctest: +SKIP
        'passed'
    """

    def __init__(self, sandbox: Sandbox | None = None, limits: Limits | None = None,
                 compile_cache: CompileCache | None = None, **sandbox_kw):
        """compile_cache: compiled programs of other languages (default: an in-memory cache of this evaluator)."""
        self.sandbox = sandbox or Sandbox(**sandbox_kw)
        self.limits = limits or Limits()
        self.compile_cache = compile_cache if compile_cache is not None else CompileCache()
        self.stats = {"programs": 0, "sandbox_errors": 0, "duplicates": 0}

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
        if len(programs) != len(parsed):
            raise ValueError(f"evaluate: {len(programs)} programs for {len(parsed)} test specs; give one spec each")
        first = {}  # (program, spec) -> index of its first occurrence
        keys = [(code, _key(sp)) for code, sp in zip(programs, parsed, strict=True)]
        unique = [first.setdefault(k, i) == i for i, k in enumerate(keys)]
        jobs, owner, plans, decided = [], [], {}, {}
        for p, (code, sp) in enumerate(zip(programs, parsed, strict=True)):
            if not unique[p]:
                continue
            if (getattr(sp, "language", None) or "python") != "python":
                planned = native.plan(code, sp, self.limits)
                if isinstance(planned, Outcome):
                    decided[p] = planned
                else:
                    plans[p] = planned
                continue
            new = _jobs(code, sp, self.limits)
            jobs += new
            owner += [p] * len(new)
        if plans:  # compile first (cached), as jobs of their own; then the runs join the batch
            compiled = native.compile_all(self.sandbox, list(plans.values()), self.compile_cache)
            for p, plan in plans.items():
                result = compiled[plan.key]
                if isinstance(result, Compiled) and result.ok:
                    new = plan.make_jobs(result.files)
                    jobs += new
                    owner += [p] * len(new)
                else:
                    decided[p] = native.failed(plan, result)
        runs = self.sandbox.run(jobs) if jobs else []
        outcomes = self._assemble(parsed, owner, jobs, runs)
        for p, outcome in decided.items():
            outcomes[p] = outcome
        for p, sp in enumerate(parsed):
            if unique[p]:
                outcomes[p].extra.setdefault("language", getattr(sp, "language", None) or "python")
        for p, key in enumerate(keys):
            if not unique[p]:
                src = first[key]
                outcomes[p] = dataclasses.replace(outcomes[src], tests=list(outcomes[src].tests),
                                                  extra={**outcomes[src].extra, "duplicate_of": src})
        self.stats["programs"] += len(outcomes)
        self.stats["duplicates"] += unique.count(False)
        self.stats["sandbox_errors"] += sum(o.sandbox_error for o in outcomes)
        return outcomes

    def _assemble(self, parsed, owner, jobs, runs) -> list[Outcome | None]:
        per_program = {}
        for i, p in enumerate(owner):
            per_program.setdefault(p, []).append(i)
        out = [None] * len(parsed)
        for p, idx in per_program.items():
            first = runs[idx[0]]
            tests, details = [], []
            for i in idx:
                tests += _tests(jobs[i], runs[i])
                details.append(runs[i].test_detail or (runs[i].detail if runs[i].category != "ok" else ""))
            out[p] = make_outcome(tests, next((d for d in details if d), ""), stdout=first.stdout,
                                  stderr=first.stderr, elapsed=sum(runs[i].elapsed for i in idx))
        return out


def _key(sp):
    """A hashable stand-in for a spec (call cases hold lists)."""
    return specs.dumps(sp) if isinstance(sp, specs.CallSpec) else sp


def _jobs(code: str, sp, limits: Limits) -> list[Job]:
    if isinstance(sp, specs.StdioSpec):
        return [Job(code=code, mode="stdio", stdin=c.stdin, expected_stdout=c.stdout, stdout_match=sp.match,
                    limits=limits) for c in sp.cases]
    if isinstance(sp, specs.CallSpec):
        return [Job(code=code, mode="call", entry_point=sp.entry_point, limits=limits,
                    calls=[(i, wire.encode(list(c.args))) for i, c in enumerate(sp.cases)],
                    expected=[wire.encode(c.expected) for c in sp.cases])]
    tests = {"entry_point": sp.entry_point, "setup": sp.setup, "code": sp.code, "asserts": list(sp.asserts),
             "total": sp.num_tests, "names": list(sp.declared_names)}
    return [Job(code=code, mode="assert", entry_point=sp.entry_point, tests=tests, limits=limits)]


def _tests(job: Job, run: Run) -> list[str]:
    """The job's per-test categories; without the supervisor's (it never judged: runner failure), the run's
    failure for every test, or sandbox_error if the run claims it ended well."""
    if run.tests is not None:
        return list(run.tests)
    category = run.category if run.category in FAILURES or run.category == "sandbox_error" else "sandbox_error"
    if category == "sandbox_error" and run.category == "ok":
        log.error("sandbox: a run ended without per-test verdicts (%s); scored sandbox_error", run.detail)
    return [category] * job.num_tests
