"""Parent side of the sandbox: starts the zygote, feeds it jobs, collects bounded, validated frames.

The trainer process only ever exchanges JSON frames with the zygote; it never imports or executes
model code, and never decodes a program's answers when the job carries expectations (the supervisor judges
them and sends back per-test categories). One `Sandbox` serves many batches; a batch that overruns its
deadline, or a zygote that dies, restarts the zygote and reports the unfinished jobs as `sandbox_error` (our
fault, never the model's); a frame the parent cannot take fails its own job, never the batch.
"""

import contextlib
import logging
import os
import queue
import selectors
import subprocess
import sys
import threading
import time
from pathlib import Path

from rewards.sandbox import wire
from rewards.sandbox.jobs import ARTIFACT_BYTES, Job, Run, apply_frame

log = logging.getLogger("rewards.sandbox")

STRONG_LAYERS = ("namespaces", "readonly_root", "cgroups", "uid_drop", "seccomp")
ANSWER_EXPANSION = 100
"""Worst measured ratio of a supervisor's peak memory to the answer bytes it parsed, checked and decoded (~70)."""
_SOURCES = ("wire", "_compare", "_jail", "_cgroups", "_native", "_program", "_protocol", "_tester", "_supervisor",
            "_slot", "_zygote")
_BOOT = """
import sys, types
for _n in ("rewards", "rewards.sandbox"):
    _m = types.ModuleType(_n); _m.__path__ = []; sys.modules[_n] = _m
for _n, _src in SOURCES:
    _m = types.ModuleType("rewards.sandbox." + _n); sys.modules[_m.__name__] = _m
    setattr(sys.modules["rewards.sandbox"], _n, _m)
    exec(compile(_src, "rewards/sandbox/" + _n + ".py", "exec"), _m.__dict__)
sys.modules["rewards.sandbox._zygote"].boot()
"""


class SandboxUnavailable(RuntimeError):
    """The requested isolation cannot be provided on this machine."""


def _pick_python() -> str:
    for cand in ("/usr/bin/python3", sys.executable):
        try:
            out = subprocess.run([cand, "-I", "-S", "-c", "import sys; print(sys.version_info >= (3, 10))"],
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
                 disable: tuple[str, ...] = (), supervisor_memory_mb: int = 1024):
        """max_concurrency: programs running at once (default 2 per core). disable: layers to switch off
        ("namespaces", "cgroups", "seccomp", "uid_drop"), for debugging and tests; needs allow_weak=True.
        supervisor_memory_mb: address-space limit of each trusted supervisor (it holds one job's test code,
        expectations, output and answers, all bounded by Limits)."""
        unknown = set(disable) - {"namespaces", "cgroups", "seccomp", "uid_drop"}
        if unknown:
            raise ValueError(f"disable={disable!r}: unknown layers {sorted(unknown)}; "
                             "choose from namespaces, cgroups, seccomp, uid_drop")
        self.disable = tuple(disable)
        self.max_concurrency = max_concurrency or max(2, 2 * (os.cpu_count() or 1))
        self.allow_weak = allow_weak
        self.python = python or _pick_python()
        self.supervisor_memory_mb = supervisor_memory_mb
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
        self.proc = subprocess.Popen([self.python, "-I", "-S", "-B", "-c", boot], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                                     start_new_session=True, close_fds=True, cwd="/")
        self._outq = queue.Queue()
        self._writer = threading.Thread(target=self._write_loop, args=(self.proc, self._outq), daemon=True)
        self._writer.start()
        self._reader = wire.FrameReader()
        layers = ("namespaces", "cgroups", "seccomp", "uid_drop")
        cfg = {f"want_{layer}": layer not in self.disable for layer in layers}
        cfg.update(uid=65534, gid=65534, max_concurrency=self.max_concurrency,
                   supervisor_memory_mb=self.supervisor_memory_mb,
                   supervisor_recycle_mb=min(128, self.supervisor_memory_mb // 4))
        self._outq.put(wire.frame(cfg))
        ready = self._read_frames(time.monotonic() + 30)
        if not ready or ready[0].get("t") != "ready":
            self._kill_zygote()
            raise SandboxUnavailable(f"sandbox runner failed to start (python {self.python})")
        self.layers = {"session": None, "rlimits": None, "scrubbed_env": None, "closed_stdin": None,
                       "output_cap": None, "deadline": None, **ready[0]["layers"]}
        self.cgroup_paths = ready[0]["cgroup_paths"]
        missing = {k: v for k, v in self.layers.items() if v is not None and k in STRONG_LAYERS}
        if self.layers.get("process_rlimits", "") is None:  # rootless: rlimits per program stand in for cgroups
            missing.pop("cgroups", None)
        if missing and not self.allow_weak:
            self._kill_zygote()
            raise SandboxUnavailable(f"isolation layers unavailable: {missing}; pass allow_weak=True to run "
                                     "model code without them (not safe against hostile programs)")
        if missing:
            log.warning("!!! SANDBOX RUNNING WITHOUT STRONG ISOLATION LAYERS %s: hostile programs can damage "
                        "this machine !!!", missing)
        off = {k: v for k, v in self.layers.items() if v is not None}
        log.log(logging.WARNING if off else logging.INFO, "sandbox layers active: %s; off: %s",
                ", ".join(self.active_layers), "; ".join(f"{k} ({v})" for k, v in off.items()) or "none")

    @property
    def runner_pid(self) -> int | None:
        """PID of the sandbox's runner (the zygote): every process of the sandbox descends from it."""
        return self.proc.pid if self.proc is not None else None

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
        for stream in (proc.stdin, proc.stdout):
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
        for job in jobs:
            # A compile job's one "answer" is its compiled files, a single string: no tree to expand.
            if job.mode != "compile" and job.limits.answer_bytes * ANSWER_EXPANSION > self.supervisor_memory_mb << 20:
                raise ValueError(f"Limits.answer_bytes={job.limits.answer_bytes}: a supervisor may need "
                                 f"{ANSWER_EXPANSION}x that to parse and check the answers, more than "
                                 f"supervisor_memory_mb={self.supervisor_memory_mb}; raise it or lower answer_bytes")
        with self._lock:
            return self._run(jobs, batch_timeout)

    def _run(self, jobs: list[Job], batch_timeout: float | None) -> list[Run]:
        self.start()
        runs = [Run() for _ in jobs]
        if batch_timeout is None:
            slowest = max((j.limits.timeout for j in jobs), default=0)
            batch_timeout = 30 + slowest * (1 + len(jobs) / self.max_concurrency)
        deadline = time.monotonic() + batch_timeout
        # Jobs go to the zygote a window at a time, which bounds what it holds queued.
        todo, window = list(range(len(jobs)))[::-1], 4 * self.max_concurrency + 8
        ids, ended = {}, set()
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout.fileno(), selectors.EVENT_READ, None)
        try:
            while todo or len(ended) < len(ids):
                while todo and len(ids) - len(ended) < window:
                    i = todo.pop()
                    self._next_id += 1
                    ids[self._next_id] = i
                    self._submit(self._next_id, jobs[i])
                timeout = deadline - time.monotonic()
                events = sel.select(timeout) if timeout > 0 else []
                why = "batch deadline reached" if not events else None
                if events and not self._on_zygote(ids, ended, jobs, runs):
                    why = "sandbox runner died" if self.proc.poll() is not None else "runner closed its output"
                if why is not None:
                    self._fail(runs, [i for j, i in ids.items() if j not in ended] + todo[::-1], why)
                    break
        finally:
            sel.close()
        self.stats["programs"] += len(jobs)
        self.stats["sandbox_errors"] += sum(r.category == "sandbox_error" for r in runs)
        return runs

    def _submit(self, job_id: int, job: Job) -> None:
        lim = job.limits
        frame = {
            "op": "run", "id": job_id, "mode": job.mode, "code": job.code, "entry_point": job.entry_point,
            "calls": job.calls, "stdin": job.stdin, "check": job.check(),
            "limits": {"timeout": lim.timeout, "memory_mb": lim.memory_mb, "disk_mb": lim.disk_mb,
                       "output_bytes": lim.output_bytes, "answer_bytes": lim.answer_bytes,
                       "max_processes": lim.max_processes, "address_space_mb": lim.address_space_mb,
                       "open_files": lim.open_files, "artifact_bytes": ARTIFACT_BYTES}}
        blobs = []
        if job.language != "python":  # the files travel as raw blobs after the frame, not inside the JSON
            frame.update(language=job.language, files=list(job.files), argv=job.argv, steps=job.steps,
                         collect=job.collect, env=job.env, seccomp_allow=job.seccomp_allow)
            blobs = list(job.files.values())
        self._outq.put(wire.frame_blobs(frame, blobs))

    def _on_zygote(self, ids: dict, ended: set, jobs: list, runs: list) -> bool:
        data = os.read(self.proc.stdout.fileno(), 1 << 16)
        if not data:
            return False
        for fr in self._reader.feed(data):
            job_id = fr.get("id") if type(fr) is dict else None
            i = ids.get(job_id) if type(job_id) is int and job_id not in ended else None
            if i is None:
                continue
            try:
                done = apply_frame(fr, jobs[i], runs[i])
            except (ValueError, TypeError, KeyError) as exc:  # a bug of ours: this job only
                log.error("sandbox: malformed frame from the runner for job %d (%s); scored sandbox_error", i, exc)
                runs[i] = Run(category="sandbox_error", detail=f"runner sent a malformed frame: {exc}"[:500])
                done = True
            if done:
                ended.add(job_id)
        return True

    def _fail(self, runs: list, unfinished: list, why: str) -> None:
        log.error("sandbox: %s; restarting the runner (%d programs unfinished)", why, len(unfinished))
        for i in unfinished:
            runs[i] = Run(category="sandbox_error", detail=why)
        self._kill_zygote()
        self.stats["restarts"] += 1


def _rmdir(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.rmdir(path)
