"""Slots: persistent trusted processes that run one job at a time, and their forkers.

Runs under the system Python, loaded by source (see `pool.py`). Process tree:

    zygote   trusted; private mount/net/ipc/uts namespaces, minimal read-only root; never runs model code
      slot (supervisor)   trusted, persistent, own session; deadline, output caps, calls, assert-style tests
        forker            trusted, persistent; keeps the next program forked ahead, reaps it, reports its exit status
          program         PID 1 of its own PID and mount namespaces; cgroups, hard rlimits, nobody, seccomp

The supervisor never forks after it has seen a job, and the forker never receives a job at all, so the
program's memory (a copy of the forker's) holds no test code or expected values, of this job or earlier
ones. The program, forked ahead, reads its own job (code, limits; no tests) and, still running our code and
before it hardens itself, hands the supervisor its pipes and a pidfd (SCM_RIGHTS): the supervisor talks to
the program directly and can kill it without racing pid reuse. For assert-style jobs the supervisor reads
the test spec from the job's channel (a socket whose other end the parent holds; the zygote only passes it
on) after the program is forked, and runs it against proxies of the program (`_tester.py`), so each
`candidate(...)` is one round trip to the program. The verdict goes back on that channel; how the program
ended goes to the zygote.
"""

import contextlib
import os
import select
import signal
import socket
import time

from rewards.sandbox import _jail, _program, _tester, wire
from rewards.sandbox._jail import write_all


class _Discard:
    """sys.stdout/sys.stderr of the supervisor while test code runs (fd 1 is not ours to write)."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


class Supervisor:
    """Deadline, output caps, relaying calls; decides how the run ended."""

    def __init__(self, job: dict, cfg: dict, slot: "_Slot"):
        self.job, self.cfg, self.slot, self.cgroups = job, cfg, slot, slot.cgroups
        self.lim = job["limits"]
        self.out, self.err = bytearray(), bytearray()
        self.out_total = 0
        self.ending = None  # (category, detail) once decided by us
        self.load = None
        self.names = None
        self.pending_calls = list(job.get("calls") or [])
        self.calls_open = 0
        self.answers, self.seq, self.gone = {}, 0, None
        self.tests = None  # the assert-style test spec, read from the channel after the fork
        self.status = None
        self.open = set()

    def run(self) -> None:
        job = self.job
        if not self.cfg["namespaces"]:
            job["workdir"] = _make_workdir()
        self.t0 = time.monotonic()
        self.deadline = self.t0 + self.lim["timeout"]
        out_r, err_r, self.req_w, resp_r, self.pidfd = self.slot.fork_program(job)
        self.poll, self.watched = select.poll(), {}  # fd -> name
        for fd, name in ((out_r, "out"), (err_r, "err"), (resp_r, "resp")):
            self._watch(fd, name)
            self.open.add(name)
        self._watch(self.slot.z_in, "z")
        self.readers = {"resp": wire.FrameReader(self.lim["output_bytes"] + (1 << 20)), "tests": wire.FrameReader()}
        try:
            if job["mode"] == "assert":
                self._assert_tests()
            self._pump(lambda: not self.open)
            self._reap()
        finally:
            self._close_req()
            os.close(self.pidfd)
        self._finish()

    # -- assert-style tests -----------------------------------------------------------------------------
    def _assert_tests(self) -> None:
        channel = self.job["channel"]
        self._pump(lambda: self.names is not None or "resp" not in self.open)
        if self.names is not None:
            self._watch(channel, "tests")
            self.open.add("tests")
            self._pump(lambda: self.tests is not None or "tests" not in self.open or "resp" not in self.open)
        if self.tests is not None:
            verdict = self._run_tests_with_deadline()
            with contextlib.suppress(OSError):
                write_all(channel, wire.frame({"t": "verdict", **verdict}))
        if "tests" in self.open:
            self._unwatch(channel)
            self.open.discard("tests")
        os.close(channel)
        self._close_req()

    def _run_tests_with_deadline(self) -> dict:
        def expire(*_):
            self._kill("timeout", f"wall-clock limit of {self.lim['timeout']}s reached")
            self.gone = self.gone or self.ending
            raise _tester.ProgramGone(*self.gone)

        # The pump enforces the deadline while a call is open; the timer also stops test code that runs
        # past it between calls (the program is then killed and the remaining tests count as timeouts).
        old = signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, max(self.deadline - time.monotonic(), 0) + 0.5)
        saved = _tester.sys_streams(_Discard())
        try:
            return _tester.run_tests(self.tests, self.names, self._call, lambda: self.gone)
        except _tester.ProgramGone:  # the timer fired outside a test statement
            return {"tests": [self.gone[0]] * self.tests["total"], "detail": str(self.gone[1])}
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
            _tester.sys_streams(*saved)

    def _call(self, name: str, args: list) -> dict:
        try:
            return self._forward(name, args)
        except Exception as exc:  # ProgramGone and the timer's exceptions are BaseExceptions and pass through
            raise _tester.HarnessFailure(f"forwarding a call failed: {type(exc).__name__}: {exc}") from exc

    def _forward(self, name: str, args: list) -> dict:
        if self.gone is not None:
            raise _tester.ProgramGone(*self.gone)
        self.seq += 1
        seq = self.seq
        self._send_call({"seq": seq, "name": name, "args": args})
        self._pump(lambda: seq in self.answers or "resp" not in self.open)
        if seq in self.answers:
            return self.answers.pop(seq)
        # The program closed its result channel: it has ended, or can no longer answer.
        self._signal_kill()
        self._reap()
        category, detail = self._classify()
        self.gone = (category if category != "ok" else "runtime_error", detail)
        raise _tester.ProgramGone(*self.gone)

    # -- the program ------------------------------------------------------------------------------------
    def _emit(self, obj: dict) -> None:
        obj["id"] = self.job["id"]
        write_all(self.slot.z_out, wire.frame(obj))

    def _kill(self, category: str, detail: str) -> None:
        if self.ending is None:
            self.ending = (category, detail)
        self._signal_kill()

    def _signal_kill(self) -> None:
        # Through the pidfd, so a reaped (maybe reused) pid is never signalled. The program is PID 1 of its
        # namespace: the kernel kills the whole tree.
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)

    def _send_call(self, msg: dict) -> None:
        # If the program is gone, its ending is reported when the pipes close.
        with contextlib.suppress(OSError):
            write_all(self.req_w, wire.frame({"seq": msg["seq"], "name": msg["name"], "args": msg["args"]}))

    def _on_program(self, msg: dict) -> None:
        t = msg.get("t")
        if t == "setup_error":
            self._kill("sandbox_error", msg.get("detail", ""))
        elif t == "load_error":
            self.load = msg
        elif t == "loaded" and self.names is None:
            self.names = [str(n) for n in msg.get("names", [])][:1000]
            self._next_call()
        elif t == "result" and self.job["mode"] == "assert":
            self.answers[msg.get("seq")] = {k: msg[k] for k in ("ok", "exc", "detail") if k in msg}
        elif t == "result":
            self.calls_open -= 1
            self._emit({k: msg[k] for k in ("t", "seq", "ok", "exc", "detail") if k in msg})
            self._next_call()
        elif t == "done":
            self.load = self.load or {"t": "done"}
        else:
            self._kill("runtime_error", "program wrote a malformed frame on the result channel")

    def _next_call(self) -> None:
        if self.job["mode"] != "call" or self.calls_open:
            return
        if self.pending_calls:
            seq, args = self.pending_calls.pop(0)
            self.calls_open += 1
            self._send_call({"seq": seq, "name": self.job["entry_point"], "args": args})
        else:
            self._close_req()

    def _close_req(self) -> None:
        if self.req_w is not None:
            os.close(self.req_w)
            self.req_w = None

    def _on_output(self, fd_name: str, data: bytes) -> None:
        keep = self.out if fd_name == "out" else self.err
        cap = self.lim["output_bytes"]
        self.out_total += len(data)
        room = (cap if fd_name == "out" else 8192) - len(keep)
        if room > 0:
            keep += data[:room]
        if self.out_total > cap:
            self._kill("output_limit", f"program wrote more than {cap} bytes")

    def _pump(self, done) -> None:
        """Handle the program's output, answers and the deadline until done() is true."""
        while not done():
            timeout = self.deadline - time.monotonic()
            if timeout <= 0:
                self._kill("timeout", f"wall-clock limit of {self.lim['timeout']}s reached")
                self.deadline = float("inf")
                continue
            for fd, _ in self.poll.poll(min(timeout, 3600) * 1000):
                if fd in self.watched:  # not unwatched earlier in this round
                    self._on_readable(fd, self.watched[fd])

    def _watch(self, fd: int, name: str) -> None:
        self.poll.register(fd, select.POLLIN)
        self.watched[fd] = name

    def _unwatch(self, fd: int) -> None:
        self.poll.unregister(fd)
        del self.watched[fd]

    def _on_readable(self, fd: int, name: str) -> None:
        data = os.read(fd, 1 << 16)
        if name == "z":
            if not data:  # the zygote went away: stop the program
                self._unwatch(fd)
                self._kill("sandbox_error", "runner lost its zygote")
                self.slot.zygote_gone = True
            return
        if not data:
            self._unwatch(fd)
            if name != "tests":
                os.close(fd)
            self.open.discard(name)
            return
        if name in ("resp", "tests"):
            try:
                msgs = self.readers[name].feed(data)
            except (ValueError, RecursionError):  # RecursionError: a frame nested too deep for the JSON parser
                msgs = [None]
            for msg in msgs:
                if name == "tests":
                    self.tests = msg
                elif type(msg) is not dict:
                    self._kill("runtime_error", "program wrote an oversized or malformed result frame")
                else:
                    self._on_program(msg)
        else:
            self._on_output(name, data)

    def _reap(self) -> None:
        """Wait for the forker's report of the program's exit status (killing the program at the deadline)."""
        while self.status is None:
            timeout = self.deadline - time.monotonic()
            if timeout <= 0:
                self._kill("timeout", f"wall-clock limit of {self.lim['timeout']}s reached")
                self.deadline, timeout = float("inf"), None
            self.status = self.slot.exit_status(None if timeout in (None, float("inf")) else timeout)

    def _classify(self) -> tuple[str, str]:
        status = self.status
        oom = bool(self.cgroups.dirs) and self.cgroups.oom_killed(self.job["cg"], self.job["oom0"])
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
        if self.ending is not None:
            return self.ending
        if oom:
            return "memory", "killed by the memory cgroup"
        if sig == signal.SIGXCPU:
            return "timeout", "CPU-time limit reached"
        if self.load is not None and self.load["t"] == "load_error":
            return self.load["category"], self.load.get("detail", "")
        if sig:
            return "runtime_error", f"killed by signal {signal.Signals(sig).name}"
        if self.job["mode"] == "stdio" and (self.load is None or code != 0):
            return "runtime_error", f"exited with status {code} before finishing"
        return "ok", f"exit status {code}"

    def _finish(self) -> None:
        category, detail = self._classify()
        elapsed = time.monotonic() - self.t0
        if "workdir" in self.job:
            import shutil  # only without namespaces; imported here to keep it (and bz2, lzma) out of every fork
            shutil.rmtree(self.job["workdir"], ignore_errors=True)
        self._emit({"t": "end", "category": category, "detail": str(detail)[:500], "elapsed": round(elapsed, 4),
                    "names": self.names,
                    "stdout": self.out.decode("utf-8", "replace"), "stderr": self.err.decode("utf-8", "replace")})


class _Slot:
    """The persistent side of a slot: links to the zygote and to the forker."""

    def __init__(self, cfg: dict, cgroups, z_in: int, z_out: int, fd_sock: int):
        self.cfg, self.cgroups, self.z_in, self.z_out = cfg, cgroups, z_in, z_out
        self.fd_sock = socket.socket(fileno=fd_sock)
        self.zygote_gone = False
        ctl_slot, ctl_forker = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        job_r, self.job_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 70
            try:
                keep = {2, job_r, ctl_forker.fileno(), *cgroups.dirs.values()}
                if cfg.get("pidns_fd") is not None:
                    keep.add(cfg["pidns_fd"])
                _jail.close_except(keep)
                _forker(cfg, cgroups, job_r, ctl_forker)
                code = 0
            finally:
                os._exit(code)
        ctl_forker.close()
        os.close(job_r)
        self.ctl = ctl_slot

    def fork_program(self, job: dict) -> list:
        """Hand the job to the program the forker keeps ready; returns its [out_r, err_r, req_w, resp_r, pidfd]."""
        write_all(self.job_w, wire.frame(job))
        msg, fds, _, _ = socket.recv_fds(self.ctl, 256, 5)
        if len(fds) != 5:
            for fd in fds:
                os.close(fd)
            raise OSError(f"forker failed: {msg[:200]!r}")
        return fds

    def exit_status(self, timeout: float | None) -> int | None:
        self.ctl.settimeout(timeout)
        try:
            msg = self.ctl.recv(256)
        except TimeoutError:
            return None
        if not msg:
            raise OSError("forker exited")
        return int(msg)


def slot_main(cfg: dict, cgroups, z_in: int, z_out: int, fd_sock: int) -> None:
    """A slot's loop: one job at a time from the zygote, until the zygote closes the link."""
    _jail.prctl(_jail.PR_SET_PDEATHSIG, signal.SIGKILL)
    _jail.set_name("sbx-slot")
    slot = _Slot(cfg, cgroups, z_in, z_out, fd_sock)
    reader = wire.FrameReader()
    while not slot.zygote_gone:
        data = os.read(z_in, 1 << 16)
        if not data:
            return
        for job in reader.feed(data):
            if job.get("channel"):
                _, fds, _, _ = socket.recv_fds(slot.fd_sock, 16, 1)
                job["channel"] = fds[0]
            Supervisor(job, cfg, slot).run()


def _forker(cfg: dict, cgroups, job_r: int, ctl: socket.socket) -> None:
    """Keeps the slot's next program forked ahead (fresh PID namespace, waiting for its job); reports its exit status.

    The program reads its own job, makes its own pipes and hands them to the supervisor (`_program.py`), so this
    loop touches very little memory: every page it writes while a program lives is a copy-on-write fault.
    """
    _jail.prctl(_jail.PR_SET_PDEATHSIG, signal.SIGKILL)
    _jail.set_name("sbx-forker")
    # Set once here rather than in every program: default signal dispositions and the programs' environment.
    for sig in _program.DEFAULT_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    os.environ.clear()
    os.environ.update(_program.ENVIRONMENT)
    namespaces, pidns_fd = cfg["namespaces"], cfg.get("pidns_fd")
    unshare, setns, status_of = _jail.unshare, _jail.setns, b"%d".__mod__
    while True:
        if namespaces:
            unshare(_jail.CLONE_NEWPID)
        pid = os.fork()
        if pid == 0:
            try:
                _program.run_program(cfg, job_r, ctl, cgroups)
            finally:
                os._exit(70)
        if namespaces:
            setns(pidns_fd, _jail.CLONE_NEWPID)  # so that the next unshare is allowed
        _, status = os.waitpid(pid, 0)
        try:
            ctl.send(status_of(status))
        except OSError:  # the slot is gone
            return


def _make_workdir() -> str:
    import tempfile
    path = tempfile.mkdtemp(prefix="rlwork-sbx-")
    os.chown(path, 65534, 65534) if os.getuid() == 0 else None
    return path
