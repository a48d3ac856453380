"""The supervisor: trusted parent of one sandboxed program (one per job, forked by the zygote).

Runs under the system Python, loaded by source (see `pool.py`). Process tree for one job:

    zygote   trusted; private mount/net/ipc/uts namespaces, minimal read-only root; never runs model code
      supervisor   trusted; own session; deadline, output caps, call relay, assert-style tests
        program    PID 1 of its own PID namespace; cgroups, hard rlimits, nobody, seccomp; runs model code

For assert-style jobs the supervisor is also the test worker: after the fork it reads the test code from
the job's channel (a socket whose other end the parent holds; the zygote only passes it on) and runs it
against proxies of the program (`_tester.py`), so each `candidate(...)` is one round trip to the program.
The verdict goes back on that channel; how the program ended goes to the zygote as before.
"""

import contextlib
import os
import selectors
import shutil
import signal
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

    def __init__(self, job: dict, cfg: dict, z_in: int, z_out: int, cgroups):
        self.job, self.cfg, self.z_in, self.z_out, self.cgroups = job, cfg, z_in, z_out, cgroups
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
        pipes = {n: os.pipe() for n in ("out", "err", "req", "resp")}
        fds = {"out_w": pipes["out"][1], "err_w": pipes["err"][1], "req_r": pipes["req"][0],
               "resp_w": pipes["resp"][1]}
        if self.cfg["namespaces"]:
            _jail.unshare(_jail.CLONE_NEWPID | _jail.CLONE_NEWNS)
        self.t0 = time.monotonic()
        self.deadline = self.t0 + self.lim["timeout"]
        pid = os.fork()
        if pid == 0:
            try:
                _program.run_program(job, self.cfg, fds, self.cgroups)
            finally:
                os._exit(70)
        self.pid = pid
        for fd in fds.values():
            os.close(fd)
        self.req_w = pipes["req"][1]
        self.sel = selectors.DefaultSelector()
        for fd, name in ((pipes["out"][0], "out"), (pipes["err"][0], "err"), (pipes["resp"][0], "resp")):
            self.sel.register(fd, selectors.EVENT_READ, name)
            self.open.add(name)
        self.sel.register(self.z_in, selectors.EVENT_READ, "z")
        self.readers = {"resp": wire.FrameReader(self.lim["output_bytes"] + (1 << 20)), "tests": wire.FrameReader()}
        if job["mode"] == "assert":
            self._assert_tests()
        self._pump(lambda: not self.open)
        self._reap()
        self._finish()

    # -- assert-style tests -----------------------------------------------------------------------------
    def _assert_tests(self) -> None:
        channel = self.job["channel"]
        self._pump(lambda: self.names is not None or "resp" not in self.open)
        if self.names is not None:
            self.sel.register(channel, selectors.EVENT_READ, "tests")
            self.open.add("tests")
            self._pump(lambda: self.tests is not None or "tests" not in self.open or "resp" not in self.open)
        if self.tests is not None:
            verdict = self._run_tests_with_deadline()
            with contextlib.suppress(OSError):
                write_all(channel, wire.frame({"t": "verdict", **verdict}))
        if "tests" in self.open:
            self.sel.unregister(channel)
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
        if self.gone is not None:
            raise _tester.ProgramGone(*self.gone)
        self.seq += 1
        seq = self.seq
        self._send_call({"seq": seq, "name": name, "args": args})
        self._pump(lambda: seq in self.answers or "resp" not in self.open)
        if seq in self.answers:
            return self.answers.pop(seq)
        # The program closed its result channel: it has ended, or can no longer answer.
        if self.status is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        self._reap()
        category, detail = self._classify()
        self.gone = (category if category != "ok" else "runtime_error", detail)
        raise _tester.ProgramGone(*self.gone)

    # -- the program ------------------------------------------------------------------------------------
    def _emit(self, obj: dict) -> None:
        obj["id"] = self.job["id"]
        write_all(self.z_out, wire.frame(obj))

    def _kill(self, category: str, detail: str) -> None:
        if self.ending is None:
            self.ending = (category, detail)
        if self.status is None:  # never signal a reaped (maybe reused) pid
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)  # PID 1 of its namespace: the kernel kills the whole tree

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
            self._emit({"t": "loaded", "names": self.names})
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
            for key, _ in self.sel.select(min(timeout, 3600)):
                self._on_readable(key.fd, key.data)

    def _on_readable(self, fd: int, name: str) -> None:
        data = os.read(fd, 1 << 16)
        if name == "z":
            if not data:  # the zygote went away: stop the program
                self.sel.unregister(fd)
                self._kill("sandbox_error", "runner lost its zygote")
            return
        if not data:
            self.sel.unregister(fd)
            if name != "tests":
                os.close(fd)
            self.open.discard(name)
            return
        if name in ("resp", "tests"):
            try:
                msgs = self.readers[name].feed(data)
            except ValueError:
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
        if self.status is None:
            _, self.status = os.waitpid(self.pid, 0)

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
        self._close_req()
        category, detail = self._classify()
        elapsed = time.monotonic() - self.t0
        if "workdir" in self.job:
            shutil.rmtree(self.job["workdir"], ignore_errors=True)
        self._emit({"t": "end", "category": category, "detail": str(detail)[:500], "elapsed": round(elapsed, 4),
                    "stdout": self.out.decode("utf-8", "replace"), "stderr": self.err.decode("utf-8", "replace")})


def _make_workdir() -> str:
    import tempfile
    path = tempfile.mkdtemp(prefix="rlwork-sbx-")
    os.chown(path, 65534, 65534) if os.getuid() == 0 else None
    return path
