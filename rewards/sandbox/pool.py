"""Parent side of the sandbox: starts the zygote, feeds it jobs, collects plain-data events.

The trainer process only ever exchanges JSON frames with the zygote; it never imports or executes
model code. One `Sandbox` serves many batches; a batch that overruns its deadline, or a zygote that
dies, restarts the zygote and reports the unfinished jobs as `sandbox_error` (our fault, never the model's).

Assert-style jobs also get a channel: a socket pair whose far end is passed to the zygote (SCM_RIGHTS) and
on to the job's supervisor. The test spec is written into it here and read by the supervisor only after it
has forked the program; the verdict comes back on it. The zygote never reads it.
"""

import contextlib
import logging
import os
import queue
import selectors
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from rewards.sandbox import wire

log = logging.getLogger("rewards.sandbox")

STRONG_LAYERS = ("namespaces", "readonly_root", "cgroups", "uid_drop", "seccomp")
_SOURCES = ("wire", "_jail", "_cgroups", "_program", "_tester", "_supervisor", "_zygote")
_BOOT = """
import sys, types
for _n in ("rewards", "rewards.sandbox"):
    _m = types.ModuleType(_n); _m.__path__ = []; sys.modules[_n] = _m
for _n, _src in SOURCES:
    _m = types.ModuleType("rewards.sandbox." + _n); sys.modules[_m.__name__] = _m
    setattr(sys.modules["rewards.sandbox"], _n, _m)
    exec(compile(_src, "rewards/sandbox/" + _n + ".py", "exec"), _m.__dict__)
sys.modules["rewards.sandbox._zygote"].main()
"""


class SandboxUnavailable(RuntimeError):
    """The requested isolation cannot be provided on this machine."""


@dataclass(frozen=True, kw_only=True)
class Limits:
    """Per-program limits."""

    timeout: float = 5.0
    """Wall-clock seconds from fork to the program's last answer (CPU time is capped at timeout + 1)."""
    memory_mb: int = 1024
    """Address-space rlimit; the memory cgroup of the whole tree gets 64 MiB more."""
    output_bytes: int = 1 << 20
    """stdout+stderr beyond this kills the program (category output_limit)."""
    disk_mb: int = 16
    """Size of the private /tmp and the file-size rlimit."""
    max_processes: int = 32
    """pids cgroup limit for the program's tree (threads count)."""


@dataclass(kw_only=True)
class Job:
    """One program run. mode: "call" (calls given up front), "assert" (test code run by the supervisor), "stdio"."""

    code: str
    mode: str
    entry_point: str = ""
    calls: list = field(default_factory=list)
    """[(seq, encoded args list)] for mode "call"."""
    tests: dict | None = None
    """For mode "assert": {"entry_point", "setup", "code" | "asserts", "total"} (see `_tester.run_tests`)."""
    stdin: str = ""
    limits: Limits = field(default_factory=Limits)


@dataclass(kw_only=True)
class Run:
    """What came back for one job: how it ended, the plain-data answers, captured output."""

    category: str = "sandbox_error"
    """ok | syntax_error | runtime_error | timeout | memory | output_limit | sandbox_error."""
    detail: str = ""
    names: list | None = None
    """Callables the program defined (None if it did not load)."""
    results: dict = field(default_factory=dict)
    """seq -> {"ok": tree} or {"exc": type name, "detail": str}."""
    stdout: str = ""
    stderr: str = ""
    elapsed: float = 0.0
    verdict: dict | None = None
    """Mode "assert": {"tests": [category per test], "detail": str} from the supervisor (None if none came)."""


@dataclass
class _Channel:
    """Parent end of one assert-style job's channel."""

    sock: socket.socket
    index: int
    outbuf: bytes
    reader: wire.FrameReader = field(default_factory=wire.FrameReader)


def _pick_python() -> str:
    for cand in ("/usr/bin/python3", sys.executable):
        try:
            out = subprocess.run([cand, "-I", "-S", "-c", "import sys; print(sys.version_info >= (3, 8))"],
                                 capture_output=True, text=True, timeout=20, env={})
            if out.stdout.strip() == "True":
                return cand
        except (OSError, subprocess.SubprocessError):
            continue
    return sys.executable


class Sandbox:
    """Runs untrusted programs in a pre-forked, hardened runner.

    Example:
        >>> with Sandbox() as sb:                      # doctest: +SKIP
        ...     [run] = sb.run([Job(code="def f(x):\\n    return x * 2\\n", mode="call", entry_point="f",
        ...                         calls=[(0, [21])])])
        >>> run.results[0]                             # doctest: +SKIP
        {'ok': 42}
    """

    def __init__(self, *, max_concurrency: int | None = None, allow_weak: bool = False, python: str | None = None,
                 disable: tuple[str, ...] = ()):
        """max_concurrency: programs running at once (default 2 per core). disable: layers to switch off
        ("namespaces", "cgroups", "seccomp", "uid_drop"), for debugging and tests; needs allow_weak=True."""
        unknown = set(disable) - {"namespaces", "cgroups", "seccomp", "uid_drop"}
        if unknown:
            raise ValueError(f"disable={disable!r}: unknown layers {sorted(unknown)}; "
                             "choose from namespaces, cgroups, seccomp, uid_drop")
        self.disable = tuple(disable)
        self.max_concurrency = max_concurrency or max(2, 2 * (os.cpu_count() or 1))
        self.allow_weak = allow_weak
        self.python = python or _pick_python()
        self.proc = None
        self.layers = {}
        self.stats = {"sandbox_errors": 0, "restarts": 0, "programs": 0}
        self._next_id = 0
        self._lock = threading.Lock()

    # -- lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> None:
        if self.proc is not None:
            return
        sources = [(n, (Path(__file__).parent / f"{n}.py").read_text()) for n in _SOURCES]
        boot = f"SOURCES = {sources!r}\n{_BOOT}"
        self._fd_sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        fd_sock = theirs.fileno()
        self.proc = subprocess.Popen([self.python, "-I", "-S", "-B", "-c", boot], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                                     start_new_session=True, close_fds=True, cwd="/", pass_fds=[fd_sock])
        theirs.close()
        self._outq = queue.Queue()
        self._writer = threading.Thread(target=self._write_loop, args=(self.proc, self._outq), daemon=True)
        self._writer.start()
        self._reader = wire.FrameReader()
        layers = ("namespaces", "cgroups", "seccomp", "uid_drop")
        cfg = {f"want_{layer}": layer not in self.disable for layer in layers}
        cfg.update(uid=65534, gid=65534, max_concurrency=self.max_concurrency, fd_sock=fd_sock)
        self._outq.put(wire.frame(cfg))
        ready = self._read_frames(time.monotonic() + 30)
        if not ready or ready[0].get("t") != "ready":
            self._kill_zygote()
            raise SandboxUnavailable(f"sandbox runner failed to start (python {self.python})")
        self.layers = {"session": None, "rlimits": None, "scrubbed_env": None, "closed_stdin": None,
                       "output_cap": None, "deadline": None, **ready[0]["layers"]}
        self.cgroup_paths = ready[0]["cgroup_paths"]
        missing = {k: v for k, v in self.layers.items() if v is not None and k in STRONG_LAYERS}
        if missing and not self.allow_weak:
            self._kill_zygote()
            raise SandboxUnavailable(f"isolation layers unavailable: {missing}; pass allow_weak=True to run "
                                     "model code without them (not safe against hostile programs)")
        if missing:
            log.warning("!!! SANDBOX RUNNING WITHOUT STRONG ISOLATION LAYERS %s: hostile programs can damage "
                        "this machine !!!", missing)

    @property
    def active_layers(self) -> list[str]:
        return sorted(k for k, v in self.layers.items() if v is None)

    def close(self) -> None:
        if self.proc is None:
            return
        self._outq.put(wire.frame({"op": "shutdown"}))
        self._outq.put(None)
        try:
            while self._read_frames(time.monotonic() + 10):
                pass
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self._kill_zygote()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.close()

    def _kill_zygote(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        proc.wait()
        for stream in (proc.stdin, proc.stdout, self._fd_sock):
            with contextlib.suppress(OSError):
                stream.close()
        self._remove_cgroups(getattr(self, "cgroup_paths", {}))

    @staticmethod
    def _remove_cgroups(paths: dict) -> None:
        """The zygote removes its job cgroups; after it exits we remove the base directories it made."""
        end = time.monotonic() + 5
        for base in paths.values():
            while os.path.isdir(base):
                for sub in sorted(Path(base).glob("*/"), reverse=True):
                    for pid in (sub / "cgroup.procs").read_text().split() if (sub / "cgroup.procs").exists() else []:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(int(pid), 9)
                    _rmdir(sub)
                _rmdir(Path(base))
                if time.monotonic() > end:
                    log.error("cgroup %s could not be removed", base)
                    break
                time.sleep(0.02) if os.path.isdir(base) else None

    # -- I/O -----------------------------------------------------------------------------------------------
    @staticmethod
    def _write_loop(proc, q) -> None:
        while True:
            data = q.get()
            if data is None:
                return
            try:
                proc.stdin.write(data)
                proc.stdin.flush()
            except (OSError, ValueError):
                return

    def _read_frames(self, deadline: float) -> list:
        """Frames available before the deadline ([] on timeout or EOF; self.proc.poll() tells which)."""
        fd = self.proc.stdout.fileno()
        sel = selectors.DefaultSelector()
        sel.register(fd, selectors.EVENT_READ)
        try:
            while True:
                timeout = deadline - time.monotonic()
                if timeout <= 0 or not sel.select(timeout):
                    return []
                data = os.read(fd, 1 << 16)
                if not data:
                    return []
                frames = self._reader.feed(data)
                if frames:
                    return frames
        finally:
            sel.close()

    # -- batches -------------------------------------------------------------------------------------------
    def run(self, jobs: list[Job], *, batch_timeout: float | None = None) -> list[Run]:
        """Run a batch; returns one Run per job, in order."""
        with self._lock:
            return self._run(jobs, batch_timeout)

    def _run(self, jobs: list[Job], batch_timeout: float | None) -> list[Run]:
        self.start()
        runs = [Run() for _ in jobs]
        if batch_timeout is None:
            slowest = max((j.limits.timeout for j in jobs), default=0)
            batch_timeout = 30 + slowest * (1 + len(jobs) / self.max_concurrency)
        deadline = time.monotonic() + batch_timeout
        # Jobs go to the zygote a window at a time, which bounds the channels (file descriptors) held open.
        todo, window = list(range(len(jobs)))[::-1], 4 * self.max_concurrency + 8
        ids, ended, channels = {}, set(), {}
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout.fileno(), selectors.EVENT_READ, None)
        try:
            while todo or len(ended) < len(ids) or channels:
                while todo and len(ids) - len(ended) < window:
                    i = todo.pop()
                    self._next_id += 1
                    ids[self._next_id] = i
                    chan = self._submit(self._next_id, jobs[i], i, sel)
                    if chan is not None:
                        channels[chan.sock.fileno()] = chan
                timeout = deadline - time.monotonic()
                events = sel.select(timeout) if timeout > 0 else []
                why = "batch deadline reached" if not events else None
                for key, mask in events:
                    if key.data is not None:
                        self._on_channel(key.data, mask, sel, channels, runs)
                    elif not self._on_zygote(ids, ended, runs):
                        why = "sandbox runner died" if self.proc.poll() is not None else "runner closed its output"
                        break
                if why is not None:
                    self._fail(runs, [i for j, i in ids.items() if j not in ended] + todo[::-1], why)
                    break
        finally:
            sel.close()
            for chan in channels.values():
                chan.sock.close()
        self.stats["programs"] += len(jobs)
        self.stats["sandbox_errors"] += sum(r.category == "sandbox_error" for r in runs)
        return runs

    def _submit(self, job_id: int, job: Job, index: int, sel) -> "_Channel | None":
        lim = job.limits
        chan = None
        if job.mode == "assert":
            mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                socket.send_fds(self._fd_sock, [str(job_id).encode()], [theirs.fileno()])
            finally:
                theirs.close()
            mine.setblocking(False)
            chan = _Channel(sock=mine, index=index, outbuf=wire.frame(job.tests))
            with contextlib.suppress(BlockingIOError):  # usually all of it fits in the socket buffer now
                chan.outbuf = chan.outbuf[mine.send(chan.outbuf):]
            sel.register(mine, selectors.EVENT_READ | (selectors.EVENT_WRITE if chan.outbuf else 0), chan)
        self._outq.put(wire.frame({
            "op": "run", "id": job_id, "mode": job.mode, "code": job.code, "entry_point": job.entry_point,
            "calls": job.calls, "stdin": job.stdin, "channel": chan is not None,
            "limits": {"timeout": lim.timeout, "memory_mb": lim.memory_mb, "disk_mb": lim.disk_mb,
                       "output_bytes": lim.output_bytes, "max_processes": lim.max_processes}}))
        return chan

    def _on_channel(self, chan: "_Channel", mask: int, sel, channels: dict, runs: list) -> None:
        if mask & selectors.EVENT_WRITE and chan.outbuf:
            try:
                chan.outbuf = chan.outbuf[chan.sock.send(chan.outbuf):]
            except BlockingIOError:
                pass
            except OSError:  # the supervisor is gone; it ends without a verdict
                chan.outbuf = b""
            if not chan.outbuf:
                sel.modify(chan.sock, selectors.EVENT_READ, chan)
        if not mask & selectors.EVENT_READ:
            return
        try:
            data = chan.sock.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            for msg in chan.reader.feed(data):
                if type(msg) is dict and msg.get("t") == "verdict":
                    runs[chan.index].verdict = {"tests": list(msg["tests"]), "detail": str(msg.get("detail", ""))}
            return
        sel.unregister(chan.sock)
        del channels[chan.sock.fileno()]
        chan.sock.close()

    def _on_zygote(self, ids: dict, ended: set, runs: list) -> bool:
        data = os.read(self.proc.stdout.fileno(), 1 << 16)
        if not data:
            return False
        for fr in self._reader.feed(data):
            i = ids.get(fr.get("id"))
            if i is None:
                continue
            t = fr["t"]
            if t == "result":
                runs[i].results[fr["seq"]] = {k: fr[k] for k in ("ok", "exc", "detail") if k in fr}
            elif t == "end" and fr["id"] not in ended:
                ended.add(fr["id"])
                r = runs[i]
                r.category, r.detail, r.names = fr["category"], fr.get("detail", ""), fr.get("names")
                r.stdout, r.stderr, r.elapsed = fr.get("stdout", ""), fr.get("stderr", ""), fr.get("elapsed", 0)
        return True

    def _fail(self, runs: list, unfinished: list, why: str) -> None:
        log.error("sandbox: %s; restarting the runner (%d programs unfinished)", why, len(unfinished))
        for i in unfinished:
            runs[i].category = "sandbox_error"
            runs[i].detail = why
            runs[i].verdict = None
        self._kill_zygote()
        self.stats["restarts"] += 1


def _rmdir(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.rmdir(path)
