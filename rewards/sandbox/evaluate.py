"""Programs + test specs -> detailed outcomes. Verdicts are decided here or in the test host, never in the sandbox.

- call:   the program answers each `args` with plain data; the parent compares with `expected`.
- stdio:  one sandboxed run per case; the parent compares captured stdout with the expected stdout.
- assert: the dataset's test code runs in the test host (a separate trusted process) against proxies that
          forward each call to the sandboxed program.
Expected values, test code and reference solutions never enter the sandbox.
"""

import contextlib
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from rewards import spec as specs
from rewards.sandbox import wire
from rewards.sandbox.pool import Job, Limits, Sandbox
from rewards.sandbox.verdict import Outcome, make_outcome, stdout_matches, values_equal

log = logging.getLogger("rewards.sandbox")
_HOST_BOOT = """
import sys, types
for _n in ("rewards", "rewards.sandbox"):
    _m = types.ModuleType(_n); _m.__path__ = []; sys.modules[_n] = _m
for _n, _src in SOURCES:
    _m = types.ModuleType("rewards.sandbox." + _n); sys.modules[_m.__name__] = _m
    setattr(sys.modules["rewards.sandbox"], _n, _m)
    exec(compile(_src, "rewards/sandbox/" + _n + ".py", "exec"), _m.__dict__)
sys.modules["rewards.sandbox._testhost"].main()
"""


class TestHost:
    """The separate process that runs trusted assert-style test code (see `_testhost.py`)."""

    def __init__(self, sandbox: Sandbox):
        self.sandbox = sandbox
        sources = [(n, (Path(__file__).parent / f"{n}.py").read_text()) for n in ("wire", "_testhost")]
        boot = f"SOURCES = {sources!r}\n{_HOST_BOOT}"
        self.proc = subprocess.Popen([sys.executable, "-I", "-B", "-c", boot], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                                     start_new_session=True, cwd="/")
        self.verdicts = {}
        self.cond = threading.Condition()
        self._wlock = threading.Lock()
        threading.Thread(target=self._read_loop, daemon=True).start()

    def send(self, obj: dict) -> None:
        with self._wlock:
            try:
                self.proc.stdin.write(wire.frame(obj))
                self.proc.stdin.flush()
            except (OSError, ValueError):
                pass

    def _read_loop(self) -> None:
        reader = wire.FrameReader()
        fd = self.proc.stdout.fileno()
        while True:
            data = os.read(fd, 1 << 20)
            if not data:
                with self.cond:
                    self.cond.notify_all()
                return
            for msg in reader.feed(data):
                if msg["t"] == "call":
                    self.sandbox.send({"op": "call", "id": msg["id"], "seq": msg["seq"], "name": msg["name"],
                                       "args": msg["args"]})
                elif msg["t"] == "verdict":
                    with self.cond:
                        self.verdicts[msg["id"]] = msg
                        self.cond.notify_all()
                    self.sandbox.send({"op": "finish", "id": msg["id"]})

    def wait(self, ids: set, timeout: float) -> dict:
        end = time.monotonic() + timeout
        with self.cond:
            while not ids <= self.verdicts.keys() and self.proc.poll() is None:
                left = end - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
            return {i: self.verdicts.pop(i) for i in ids if i in self.verdicts}

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, 9)
        self.proc.wait()
        self.proc.stdin.close()
        self.proc.stdout.close()


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
        self.host = None
        self.stats = {"programs": 0, "sandbox_errors": 0}

    def close(self) -> None:
        if self.host is not None:
            self.host.close()
            self.host = None
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
                jobs.append(Job(code=code, mode="serve", entry_point=sp.entry_point, limits=self.limits))
                owner.append(p)
        needs_host = any(j.mode == "serve" for j in jobs)
        if needs_host and (self.host is None or self.host.proc.poll() is not None):
            self.host = TestHost(self.sandbox)
        started, ended = {}, {}

        def on_event(i: int, fr: dict) -> None:
            sp = parsed[owner[i]]
            if jobs[i].mode != "serve":
                return
            if fr["t"] == "loaded":
                started[fr["id"]] = i
                self.host.send({"op": "start", "id": fr["id"], "names": fr["names"], "entry_point": sp.entry_point,
                                "setup": sp.setup, "code": sp.code, "asserts": list(sp.asserts),
                                "total": sp.num_tests})
            elif fr["t"] == "result":
                self.host.send({"op": "result", "id": fr["id"], "seq": fr["seq"],
                                **{k: fr[k] for k in ("ok", "exc", "detail") if k in fr}})
            elif fr["t"] == "end":
                ended[fr["id"]] = i
                cat = fr["category"] if fr["category"] != "ok" else "runtime_error"
                self.host.send({"op": "gone", "id": fr["id"], "category": cat, "detail": fr.get("detail", "")})

        runs = self.sandbox.run(jobs, on_event=on_event)
        verdicts = {}
        if started:
            verdicts = self.host.wait(set(started), timeout=self.limits.timeout + 5)
            for jid in started:
                self.host.send({"op": "drop", "id": jid})
            if len(verdicts) < len(started):
                log.error("test host did not finish %d tests in time; restarting it", len(started) - len(verdicts))
                self.host.close()
                self.host = None
        by_index = {i: verdicts.get(jid) for jid, i in started.items()}
        outcomes = self._assemble(parsed, jobs, owner, runs, by_index)
        self.stats["programs"] += len(outcomes)
        self.stats["sandbox_errors"] += sum(o.sandbox_error for o in outcomes)
        return outcomes

    def _assemble(self, parsed, jobs, owner, runs, verdicts) -> list[Outcome]:
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
                out.append(make_outcome(*_assert_verdicts(first, sp, verdicts.get(idx[0])), **kw))
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


def _assert_verdicts(run, sp, verdict) -> tuple[list[str], str]:
    n = sp.num_tests
    if run.names is None:
        return [_missing(run)] * n, run.detail
    if verdict is None:
        cat = "sandbox_error" if run.category == "sandbox_error" else "timeout"
        return [cat] * n, run.detail or "the test code did not finish"
    tests = list(verdict["tests"])[:n] + ["sandbox_error"] * max(0, n - len(verdict["tests"]))
    return tests, verdict.get("detail") or run.detail
