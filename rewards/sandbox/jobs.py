"""What the parent sends (Job, Limits) and keeps (Run) per program, and how it reads the runner's frames.

Frames come from the runner's trusted supervisors, which validated everything the program said; the parent
checks them again, strictly and without raising, so that a frame it cannot take (a bug of ours) costs only its
own job a `sandbox_error`, never the batch. Everything a Run holds is bounded by the job's limits.
"""

import logging
from dataclasses import dataclass, field

from rewards.sandbox import wire
from rewards.sandbox.verdict import CATEGORIES

log = logging.getLogger("rewards.sandbox")

MODES = ("call", "stdio", "assert")
RUN_CATEGORIES = ("ok", *(c for c in CATEGORIES if c != "passed"))
"""How a run can end (per-test verdicts are CATEGORIES)."""
_MAX_NODES = 4_000_000
_CAPS = {"output_bytes": 64 << 20, "answer_bytes": 64 << 20}  # what one supervisor holds (see supervisor_memory_mb)


@dataclass(frozen=True, kw_only=True)
class Limits:
    """Per-program limits."""

    timeout: float = 5.0
    """Wall-clock seconds from fork to the program's last answer (CPU time is capped at timeout + 1)."""
    memory_mb: int = 1024
    """Address-space rlimit; the memory cgroup of the whole tree gets 64 MiB more."""
    output_bytes: int = 1 << 20
    """stdout+stderr beyond this kills the program (category output_limit)."""
    answer_bytes: int = 4 << 20
    """Bytes the program may send back as answers (all calls together, JSON); beyond this it is killed
    (output_limit). Bounds what the trusted side holds and compares for one program."""
    disk_mb: int = 16
    """Size of the private /tmp and the file-size rlimit."""
    max_processes: int = 32
    """pids cgroup limit for the program's tree (threads count)."""

    def __post_init__(self):
        for name in ("timeout", "memory_mb", "output_bytes", "answer_bytes", "disk_mb", "max_processes"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"Limits.{name}={value!r}: must be a positive number")
        for name, cap in _CAPS.items():
            if getattr(self, name) > cap:
                raise ValueError(f"Limits.{name}={getattr(self, name)}: at most {cap} bytes (the trusted "
                                 "supervisor holds this much per program); lower it")


@dataclass(kw_only=True)
class Job:
    """One program run. mode: "call" (calls given up front), "assert" (test code run by the supervisor), "stdio".

    With expectations (expected for call, expected_stdout for stdio, tests for assert), the supervisor judges
    each test and the Run carries per-test categories (`Run.tests`); without them (call, stdio), the Run carries
    the raw answers or stdout for the caller to judge."""

    code: str
    mode: str
    entry_point: str = ""
    calls: list = field(default_factory=list)
    """[(seq, encoded args list)] for mode "call"."""
    expected: list | None = None
    """Mode "call": one encoded expected value (wire.encode) per call, in the order of `calls`."""
    tests: dict | None = None
    """For mode "assert": {"entry_point", "setup", "code" | "asserts", "total", "names"} (see `_tester.run_tests`)."""
    stdin: str = ""
    expected_stdout: str | None = None
    """Mode "stdio": the expected output (compared after `verdict.normalise_stdout`)."""
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"Job.mode={self.mode!r}: must be one of {MODES}")
        if self.mode == "assert" and not self.tests:
            raise ValueError("Job(mode='assert') needs tests={...} (see rewards.sandbox.evaluate)")
        if self.expected is not None and len(self.expected) != len(self.calls):
            raise ValueError(f"Job.expected: {len(self.expected)} values for {len(self.calls)} calls; give one each")

    @property
    def num_tests(self) -> int | None:
        """How many per-test categories the supervisor reports (None: no expectations, nothing judged)."""
        if self.mode == "assert":
            return self.tests["total"]
        if self.mode == "call" and self.expected is not None:
            return len(self.calls)
        return 1 if self.mode == "stdio" and self.expected_stdout is not None else None

    def check(self) -> dict | None:
        """What only the supervisor gets: expectations or test code."""
        if self.mode == "assert":
            return dict(self.tests)
        if self.num_tests is None:
            return None
        return {"expected": self.expected} if self.mode == "call" else {"stdout": self.expected_stdout}


@dataclass(kw_only=True)
class Run:
    """What came back for one job: how it ended, per-test categories or plain-data answers, captured output."""

    category: str = "sandbox_error"
    """How the run ended: one of RUN_CATEGORIES ("ok" or a failure category)."""
    detail: str = ""
    names: list | None = None
    """Callables the program defined (None if it did not load)."""
    tests: list | None = None
    """Per-test categories (CATEGORIES) judged by the supervisor, when the job carried expectations."""
    test_detail: str = ""
    """The first failing test's reason, when judged by the supervisor."""
    results: dict = field(default_factory=dict)
    """Mode "call" without expectations: seq -> {"ok": tree} or {"exc": type name, "detail": str}."""
    stdout: str = ""
    """All of it (up to Limits.output_bytes) without expectations; the first 8 KiB when the supervisor judged it."""
    stderr: str = ""
    elapsed: float = 0.0


def apply_frame(frame: dict, job: Job, run: Run) -> bool:
    """Record a runner frame about `job` in `run`; True once the job has ended. Raises ValueError for a frame that
    is not what a supervisor writes (the caller fails that job alone)."""
    t = frame.get("t")
    if t == "result":
        seq = frame.get("seq")
        if job.mode != "call" or job.expected is not None or type(seq) is not int or seq in run.results \
                or seq not in {s for s, _ in job.calls}:
            raise ValueError(f"an unexpected answer (seq {seq!r})")
        if "ok" in frame:
            wire.check_tree(frame["ok"], _MAX_NODES)
            run.results[seq] = {"ok": frame["ok"]}
        else:
            run.results[seq] = {"exc": _text(frame.get("exc"), 100), "detail": _text(frame.get("detail"), 300)}
        return False
    if t != "end":
        raise ValueError(f"a frame of type {t!r}")
    category, tests, names = frame.get("category"), frame.get("tests"), frame.get("names")
    if type(category) is not str or category not in RUN_CATEGORIES:
        raise ValueError(f"end category {category!r} is not one of {RUN_CATEGORIES}")
    if tests is not None and (type(tests) is not list or len(tests) != job.num_tests
                              or not all(type(c) is str and c in CATEGORIES for c in tests)):
        raise ValueError(f"per-test categories {str(tests)[:200]} for {job.num_tests} tests")
    if names is not None and (type(names) is not list or not all(type(n) is str for n in names)):
        raise ValueError("names are not a list of strings")
    run.category, run.tests, run.names = category, tests, names
    run.detail, run.test_detail = _text(frame.get("detail"), 500), _text(frame.get("test_detail"), 500)
    run.stdout = _text(frame.get("stdout"), job.limits.output_bytes)
    run.stderr = _text(frame.get("stderr"), 8192)
    elapsed = frame.get("elapsed")
    run.elapsed = float(elapsed) if type(elapsed) in (int, float) and 0 <= elapsed < 1e6 else 0.0
    return True


def _text(value, limit: int) -> str:
    return value[:limit] if type(value) is str else ""
