"""What the parent sends (Job, Limits) and keeps (Run) per program, and how it reads the runner's frames.

Frames come from the runner's trusted supervisors, which validated everything the program said; the parent
checks them again, strictly and without raising, so that a frame it cannot take (a bug of ours) costs only its
own job a `sandbox_error`, never the batch. Everything a Run holds is bounded by the job's limits.
"""

import base64
import binascii
import logging
from dataclasses import dataclass, field

from rewards.sandbox import wire
from rewards.sandbox._compare import MATCHES
from rewards.sandbox.verdict import CATEGORIES

log = logging.getLogger("rewards.sandbox")

MODES = ("call", "stdio", "assert", "compile")
RUN_CATEGORIES = ("ok", *(c for c in CATEGORIES if c != "passed"))
"""How a run can end (per-test verdicts are CATEGORIES)."""
_MAX_NODES = 4_000_000
_CAPS = {"output_bytes": 64 << 20, "answer_bytes": 64 << 20}  # what one supervisor holds (see supervisor_memory_mb)
ARTIFACT_BYTES = 32 << 20
"""Largest compiled artifact (all its files) a compile job may send back; a bigger one is a compile_error."""


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
    address_space_mb: int | None = None
    """Address-space rlimit of each process, when it must differ from memory_mb (a JVM reserves more than it uses);
    the memory cgroup still holds the tree to memory_mb. None: memory_mb."""
    open_files: int = 64
    """File-descriptor rlimit (compilers and VMs open more than a Python program)."""

    def __post_init__(self):
        if self.address_space_mb is not None and (isinstance(self.address_space_mb, bool)
                                                  or not isinstance(self.address_space_mb, int)
                                                  or self.address_space_mb <= 0):
            raise ValueError(f"Limits.address_space_mb={self.address_space_mb!r}: must be a positive int or None")
        for name in ("timeout", "memory_mb", "output_bytes", "answer_bytes", "disk_mb", "max_processes", "open_files"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"Limits.{name}={value!r}: must be a positive number")
        for name, cap in _CAPS.items():
            if getattr(self, name) > cap:
                raise ValueError(f"Limits.{name}={getattr(self, name)}: at most {cap} bytes (the trusted "
                                 "supervisor holds this much per program); lower it")


@dataclass(kw_only=True)
class Job:
    """One program run. mode: "call" (calls given up front), "assert" (test code run by the supervisor), "stdio",
    or "compile" (a compiler run on `files`, see `rewards.sandbox.languages`).

    With expectations (expected for call, expected_stdout for stdio, tests for assert), the supervisor judges
    each test and the Run carries per-test categories (`Run.tests`); without them (call, stdio), the Run carries
    the raw answers or stdout for the caller to judge.

    Python programs (`language="python"`) run as `code` in the runner's interpreter. Any other language runs as an
    executable: `files` are written to the program's /tmp/app (compile: /tmp/src) and `argv` is executed there
    (compile: each of `steps` in turn, keeping the `collect`ed outputs of /tmp/out). A compiled call job's harness
    writes one answer per call, as a line of JSON, on descriptor 3 (`rewards.harness`); `calls` then only number
    them."""

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
    """Mode "stdio": the expected output, compared as `stdout_match` says (`verdict.stdout_matches`)."""
    stdout_match: str = "lines"
    """Mode "stdio": "lines" (trailing whitespace ignored), "exact", "tokens" (whitespace-separated tokens) or
    "float" (tokens; numbers within a tolerance)."""
    limits: Limits = field(default_factory=Limits)
    language: str = "python"
    files: dict = field(default_factory=dict)
    """Other languages: file name -> bytes, written before `argv` or `steps` run."""
    argv: list = field(default_factory=list)
    """Other languages: the command to execute (absolute paths; decided by the trusted side, never the program)."""
    steps: list = field(default_factory=list)
    """Mode "compile": the commands to run in turn (each a list like argv); the first failing one ends the job."""
    collect: list = field(default_factory=list)
    """Mode "compile": names of /tmp/out files to send back ("*.class": every file with that suffix)."""
    env: dict = field(default_factory=dict)
    """Other languages: environment variables beyond the sandbox's own (PATH, HOME, LANG, TMPDIR)."""
    seccomp_allow: str = ""
    """Other languages: one syscall the seccomp filter otherwise denies that this runtime needs ("socketpair": a
    JVM's file channels; see `_jail.ALLOWABLE`)."""

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"Job.mode={self.mode!r}: must be one of {MODES}")
        if self.language != "python" and not (self.argv or self.steps):
            raise ValueError(f"Job(language={self.language!r}) needs argv (or steps, to compile): "
                             "build it with rewards.sandbox.languages")
        if self.seccomp_allow and (self.language == "python" or self.seccomp_allow not in ("socketpair",)):
            raise ValueError(f"Job.seccomp_allow={self.seccomp_allow!r}: only 'socketpair', for other languages")
        if self.stdout_match not in MATCHES:
            raise ValueError(f"Job.stdout_match={self.stdout_match!r}: must be one of {MATCHES}")
        if self.mode == "compile" and (self.language == "python" or not self.steps):
            raise ValueError("Job(mode='compile') needs a compiled language and steps")
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
        if self.mode == "call":
            return {"expected": self.expected}
        return {"stdout": self.expected_stdout, "match": self.stdout_match}


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
    artifact: dict | None = None
    """Mode "compile", compiled: file name -> bytes of the collected outputs."""


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
    if "artifact" in frame:
        if job.mode != "compile" or category != "ok":
            raise ValueError("an artifact from a job that compiled nothing")
        run.artifact = decode_files(frame["artifact"], ARTIFACT_BYTES)
    elif job.mode == "compile" and category == "ok":
        raise ValueError("a compile job that ended well without an artifact")
    return True


def decode_files(tree, max_bytes: int) -> dict:
    """A compile job's artifact as its end frame carries it ({file name: base64 text}) -> {file name: bytes}; the
    frame comes from the runner, which took the files from a program's process: names must be plain file names,
    sizes bounded."""
    if type(tree) is not dict or len(tree) > 4096:
        raise ValueError("files are not a map of names")
    out, total = {}, 0
    for name, text in tree.items():
        if not safe_name(name) or type(text) is not str:
            raise ValueError(f"file {str(name)[:80]!r} is not a plain file name with base64 content")
        total += len(text) * 3 // 4
        if total > max_bytes:
            raise ValueError(f"files larger than {max_bytes} bytes")
        try:
            out[name] = base64.b64decode(text, validate=True)
        except binascii.Error:
            raise ValueError(f"file {name!r} is not base64") from None
    return out


def safe_name(name) -> bool:
    """A file name without directories, like the runner writes and reads (`_native.py`)."""
    return (type(name) is str and 0 < len(name) <= 200 and name not in (".", "..") and "/" not in name
            and name.isprintable())


def _text(value, limit: int) -> str:
    return value[:limit] if type(value) is str else ""
