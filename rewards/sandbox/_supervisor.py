"""The supervisor: the trusted half of a slot, which runs one program at a time and decides its verdict.

Runs under the system Python, loaded by source (see `pool.py`; process tree in `_slot.py`). For each job it
takes the program the slot's forker keeps ready, hands it the job (code, limits; never the expectations, which
stay here), and then:

    - enforces the wall-clock deadline, the output cap and the answer budget (all bytes on the result channel),
      killing the program when one is exceeded;
    - accepts from the program only what `_protocol.py` allows (an answer to the open call, ...);
    - sends calls without blocking: a program that stops reading its requests cannot stall the supervisor;
    - compares answers (call mode) and stdout (stdio mode) with the expectations, or runs the assert-style test
      code against proxies of the program (`_tester.py`);
    - decides how the run ended from what it observes (exit status, signals, cgroup events, deadlines, its own
      comparisons) and reports per-test categories to the zygote in one bounded frame.

Expectations and test code reach the supervisor with the job; the program is forked from a forker made before
the slot saw any job, so neither ever exists in a program's memory. Programs in other languages (`_native.py`)
answer through their generated harness, one record per call (`_protocol.NativeChannel`), or print their output
(stdio); their compile jobs end "ok" with the compiled files or with compile_error.
"""

import contextlib
import os
import resource
import select
import signal
import time

from rewards.sandbox import _compare, _protocol, _tester, wire
from rewards.sandbox._jail import write_all

EXCERPT = 8192
"""stdout/stderr characters sent back when the supervisor judged the output itself (only for logs)."""
_SLACK = 64 << 10  # channel bytes beyond the answer budget: "armed", "loaded" and the frame headers


class _Discard:
    """sys.stdout/sys.stderr of the supervisor while test code runs (fd 1 is not ours to write)."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


class Supervisor:
    """Deadline, output caps, relaying calls; decides how the run ended and what each test got."""

    def __init__(self, job: dict, cfg: dict, slot):
        self.check = job.pop("check", None)  # expectations / test code: never part of what the program reads
        self.job, self.cfg, self.slot, self.cgroups = job, cfg, slot, slot.cgroups
        self.lim = job["limits"]
        self.native = job.get("language", "python") != "python"
        self.channel = (_protocol.NativeChannel(job["mode"], len(job.get("calls") or [])) if self.native
                        else _protocol.ProgramChannel(job["mode"]))
        self.out, self.err = bytearray(), bytearray()
        self.out_total, self.resp_total = 0, 0
        self.resp_cap = self.lim["answer_bytes"] + _SLACK
        self.ending = None  # (category, detail) once decided by us
        self.pending_calls = list(job.get("calls") or [])
        self.tests = {}  # call mode with expectations: seq -> category
        self.answer = None  # assert mode: the answer to the open call
        self.seq, self.gone, self.verdict, self.status, self.killed_at = 0, None, None, None, None
        self.open = set()
        self.req_w, self.req_buf, self.req_polled = None, b"", False
        self.reader = wire.FrameReader(self.resp_cap)
        if self.check is not None and job["mode"] == "call":
            self.check["index"] = {seq: i for i, (seq, _) in enumerate(job["calls"])}

    def run(self) -> None:
        job = self.job
        if not self.cfg["namespaces"]:
            job["workdir"] = _make_workdir()
        self.t0 = time.monotonic()
        self.deadline = self.t0 + self.lim["timeout"]
        out_r, err_r, self.req_w, resp_r, self.pidfd = self.slot.fork_program(job)
        os.set_blocking(self.req_w, False)
        if self.native:  # its calls are in its harness: nothing to send
            self._close_req()
        self.poll, self.watched = select.poll(), {}  # fd -> name
        for fd, name in ((out_r, "out"), (err_r, "err"), (resp_r, "resp")):
            self._watch(fd, name)
            self.open.add(name)
        self._watch(self.slot.z_in, "z")
        try:
            if job["mode"] == "assert":
                self._assert_tests()
            self._pump(lambda: not self.open)
            self._reap()
        finally:
            self._close_req()
            os.close(self.pidfd)
        self._finish()

    def _ended(self) -> bool:
        return "resp" not in self.open or self.ending is not None or self.channel.load is not None

    # -- assert-style tests -----------------------------------------------------------------------------
    def _assert_tests(self) -> None:
        self._pump(lambda: self.channel.names is not None or self._ended())
        if self.channel.names is not None and not self._ended():
            self.verdict = self._run_tests_with_deadline()
        self._close_req()

    def _run_tests_with_deadline(self) -> dict:
        finished = False

        def expire(*_):
            if finished:  # fired between the end of the tests and the timer's cancellation: nothing to stop
                return
            self._kill("timeout", f"wall-clock limit of {self.lim['timeout']}s reached")
            self.gone = self.gone or self.ending
            raise _tester.ProgramGone(*self.gone)

        # The pump enforces the deadline while a call is open; the timer also stops test code that runs
        # past it between calls (the program is then killed and the remaining tests count as timeouts).
        old = signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, max(self.deadline - time.monotonic(), 0) + 0.5)
        saved = _tester.sys_streams(_Discard())
        try:
            verdict = _tester.run_tests(self.check, self.channel.names, self._call, lambda: self.gone)
            finished = True
            return verdict
        except _tester.ProgramGone:  # the timer fired outside a test statement
            finished = True
            return {"tests": [self.gone[0]] * self.check["total"], "detail": str(self.gone[1])}
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
        self.channel.open_seq = self.seq
        self._send({"seq": self.seq, "name": name, "args": args})
        self._pump(lambda: self.answer is not None or self._ended())
        if self.answer is not None:
            answer, self.answer = self.answer, None
            return answer
        # The program ended, broke the protocol or ran out of time: it can no longer answer.
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

    def _send(self, msg: dict) -> None:
        """Queue a call for the program; written as the request pipe takes it (never blocking)."""
        if self.req_w is not None:
            self.req_buf += wire.frame(msg)
            self._flush_req()

    def _flush_req(self) -> None:
        try:
            while self.req_buf:
                self.req_buf = self.req_buf[os.write(self.req_w, self.req_buf):]
        except BlockingIOError:
            pass
        except OSError:  # the program closed its end; how it ended is reported when its pipes close
            self.req_buf = b""
        want = bool(self.req_buf)
        if want != self.req_polled:
            self.poll.register(self.req_w, select.POLLOUT) if want else self.poll.unregister(self.req_w)
            self.req_polled = want

    def _close_req(self) -> None:
        if self.req_w is not None:
            if self.req_polled:
                self.poll.unregister(self.req_w)
            os.close(self.req_w)
            self.req_w, self.req_buf, self.req_polled = None, b"", False

    def _on_frames(self, data: bytes) -> None:
        self.resp_total += len(data)
        try:
            if self.resp_total > self.resp_cap:
                raise wire.FrameTooLarge(f"{self.resp_total} bytes")
            if self.native:
                with wire.gc_paused():  # parses and checks the records' trees
                    events = self.channel.feed(data)
                for event in events:
                    if self.ending is None:
                        self._on_event(event)
                return
            with wire.gc_paused():
                msgs = self.reader.feed(data)
            for msg in msgs:
                if self.ending is None:
                    with wire.gc_paused():  # checks the answer's tree
                        event = self.channel.accept(msg)
                    self._on_event(event)
        except wire.FrameTooLarge:
            self._kill("output_limit", f"answers larger than the budget of {self.lim['answer_bytes']} bytes")
        except (wire.Malformed, _protocol.Violation) as exc:
            self._kill("protocol_violation", f"the program wrote {exc} on its result channel")

    def _on_event(self, event: tuple) -> None:
        kind = event[0]
        if kind == "setup_error":
            self._kill("sandbox_error", f"sandbox setup failed in the program: {event[1]}")
        elif kind == "load_error":
            self._signal_kill()  # nothing more to hear from it; its category is the load failure
        elif kind == "loaded":
            self._next_call()
        elif kind == "compiled":  # kept on the channel; judged when the job ends
            pass
        elif kind == "answer" and self.job["mode"] == "assert":
            self.answer = event[2]
        elif kind == "answer":
            _, seq, answer = event
            if self.check is None:  # no expectations here: the caller compares (answers fit the budget)
                self._emit({"t": "result", "seq": seq, **answer})
            else:
                self.tests[seq] = self._judge(seq, answer)
            self._next_call()

    def _judge(self, seq: int, answer: dict) -> str:
        if "exc" in answer:
            return "memory" if answer["exc"] == "MemoryError" else "runtime_error"
        ok = _compare.answer_equal(answer["ok"], self.check["expected"][self.check["index"][seq]])
        return "passed" if ok else "wrong_answer"

    def _next_call(self) -> None:
        if self.job["mode"] != "call" or self.channel.names is None or self.channel.open_seq is not None:
            return
        if self.pending_calls:
            seq, args = self.pending_calls.pop(0)
            self.channel.open_seq = seq
            self._send({"seq": seq, "name": self.job["entry_point"], "args": args})
        else:
            self._close_req()

    def _on_output(self, fd_name: str, data: bytes) -> None:
        keep = self.out if fd_name == "out" else self.err
        cap = self.lim["output_bytes"]
        self.out_total += len(data)
        room = (cap if fd_name == "out" else EXCERPT) - len(keep)
        if room > 0:
            keep += data[:room]
        if self.out_total > cap:
            self._kill("output_limit", f"program wrote more than {cap} bytes")

    def _pump(self, done) -> None:
        """Handle the program's output, answers, requests and the deadline until done() is true."""
        while not done():
            timeout = self.deadline - time.monotonic()
            if timeout <= 0:
                if self.killed_at is not None:  # killed a second ago and its pipes are still open (no PID namespace)
                    self._abandon()
                    continue
                self._kill("timeout", f"wall-clock limit of {self.lim['timeout']}s reached")
                self.deadline = self.killed_at = time.monotonic() + 1.0
                continue
            for fd, _ in self.poll.poll(min(timeout, 3600) * 1000):
                if fd == self.req_w:
                    self._flush_req()
                elif fd in self.watched:  # not unwatched earlier in this round
                    self._on_readable(fd, self.watched[fd])

    def _abandon(self) -> None:
        for fd, name in list(self.watched.items()):
            if name != "z":
                self._unwatch(fd)
                os.close(fd)
                self.open.discard(name)
        self.deadline = float("inf")

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
            os.close(fd)
            self.open.discard(name)
        elif name == "resp":
            if self.ending is None:
                self._on_frames(data)
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
        if self.channel.load is not None:
            return self.channel.load
        if sig:
            return "runtime_error", f"killed by signal {signal.Signals(sig).name}"
        if self.job["mode"] == "stdio" and (not self.channel.done or code != 0):
            return "runtime_error", f"exited with status {code} before finishing"
        return "ok", f"exit status {code}"

    def _tests(self, category: str) -> tuple[list | None, str]:
        """Per-test categories against the expectations (None without them), and the first failure's detail."""
        if self.check is None:
            return None, ""
        mode = self.job["mode"]
        total = len(self.job["calls"]) if mode == "call" else self.check.get("total", 1)
        if category in ("protocol_violation", "sandbox_error"):  # nothing the program answered counts
            return [category] * total, ""
        missing = category if category != "ok" else "runtime_error"
        if mode == "stdio":
            if category != "ok":
                return [category], ""
            same = _compare.stdout_matches(self.out.decode("utf-8", "replace"), self.check["stdout"],
                                           self.check.get("match", "lines"))
            return ["passed" if same else "wrong_answer"], "" if same else "stdout differs from the expected output"
        if mode == "call":
            return [self.tests.get(seq, missing) for seq, _ in self.job["calls"]], ""
        if self.verdict is None:
            return [missing] * total, ""
        return self.verdict["tests"], self.verdict["detail"]

    def _finish(self) -> None:
        category, detail = self._classify()
        artifact = None
        if self.job["mode"] == "compile":
            category, detail, artifact = self.channel.compile_outcome(category, detail, self.lim,
                                                                      bool(self.job.get("collect")))
        tests, test_detail = self._tests(category)
        elapsed = time.monotonic() - self.t0
        if "workdir" in self.job:
            import shutil  # only without namespaces; imported here to keep it (and bz2, lzma) out of every fork
            shutil.rmtree(self.job["workdir"], ignore_errors=True)
        excerpt = EXCERPT if self.check is not None else len(self.out)
        # A supervisor that grew for this job (a large answer budget) is replaced by a fresh one from the template:
        # Python keeps freed memory, and a program must not leave trusted processes big.
        big = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss > self.cfg["supervisor_recycle_mb"] << 10
        end = {"t": "end", "recycle": big, "category": category, "detail": _protocol.clean(str(detail), 500),
               "elapsed": round(elapsed, 4), "names": self.channel.names, "tests": tests,
               "test_detail": _protocol.clean(test_detail, 500),
               "stdout": self.out[:excerpt].decode("utf-8", "replace"),
               "stderr": self.err.decode("utf-8", "replace")}
        if artifact is not None:
            end["artifact"] = artifact
        self._emit(end)


def _make_workdir() -> str:
    import tempfile
    path = tempfile.mkdtemp(prefix="rlwork-sbx-")
    os.chown(path, 65534, 65534) if os.getuid() == 0 else None
    return path
