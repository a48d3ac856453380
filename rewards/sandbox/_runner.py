"""The sandbox runner: a pre-forked zygote, one supervisor per job, and the sandboxed program process.

Runs under the system Python (`/usr/bin/python3 -I -S -B`), loaded by source with `wire` and `_jail`
(see `pool.py`). Process tree for one job:

    zygote   trusted; private mount/net/ipc/uts namespaces, minimal read-only root; never runs model code
      supervisor   trusted; own session; enforces deadline and output caps, relays plain-data frames
        program    PID 1 of its own PID namespace; cgroups, hard rlimits, nobody, seccomp; runs model code

The program loads the model's code, then answers call requests ("call `name` with these args") with
plain data. It never sees expected outputs or test code: those stay in the parent / test host.
"""

import builtins
import contextlib
import io
import os
import selectors
import shutil
import signal
import sys
import time

from rewards.sandbox import _jail, wire

CGROUP_ROOT = "/sys/fs/cgroup"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _close_except(keep: set) -> None:
    low = 0
    for fd in sorted(keep) + [1 << 20]:
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1


# ----------------------------------------------------------------------------------------------- cgroups
class Cgroups:
    """Per-job cgroups (v1 memory/pids/cpu here; v2 when the unified hierarchy has the controllers)."""

    def __init__(self, want: bool):
        self.dirs = {}  # controller -> fd of our base directory
        self.paths = {}
        self.free, self.draining, self.counter = [], {}, 0
        self.v2 = False
        self.error = "not requested"
        if want:
            try:
                self._open()
                self.error = None
            except OSError as exc:
                self.error = str(exc)
                self.dirs = {}

    def _open(self) -> None:
        own = {}
        with open("/proc/self/cgroup") as fh:
            for line in fh:
                _, ctrls, path = line.rstrip("\n").split(":", 2)
                for c in ctrls.split(","):
                    own[c or "unified"] = path
        name = f"rlwork-sbx-{os.getpid()}"
        v1 = [c for c in ("memory", "pids", "cpu") if os.path.isdir(f"{CGROUP_ROOT}/{c}") and c in own]
        if "memory" in v1 and "pids" in v1:
            for c in v1:
                base = f"{CGROUP_ROOT}/{c}{own[c].rstrip('/')}/{name}"
                os.mkdir(base)
                self.paths[c] = base
                self.dirs[c] = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
            return
        ctl = f"{CGROUP_ROOT}/cgroup.controllers"
        if os.path.exists(ctl) and {"memory", "pids"} <= set(_read_path(ctl).split()):
            parent = f"{CGROUP_ROOT}{own.get('unified', '/').rstrip('/')}"
            _write_all_path(f"{parent}/cgroup.subtree_control", b"+memory +pids")
            base = f"{parent}/{name}"
            os.mkdir(base)
            _write_all_path(f"{base}/cgroup.subtree_control", b"+memory +pids")
            self.v2, self.paths["unified"] = True, base
            self.dirs["unified"] = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
            return
        raise OSError("no usable memory+pids cgroup controllers")

    def acquire(self, memory: int, pids: int) -> tuple[str, int]:
        """A cgroup for one job: an empty one from the free list, or a new one. Returns (name, oom baseline)."""
        files = {"memory": {"memory.limit_in_bytes": memory, "memory.memsw.limit_in_bytes": memory,
                            "memory.failcnt": 0},
                 "pids": {"pids.max": pids}, "cpu": {"cpu.cfs_period_us": 100000, "cpu.cfs_quota_us": 100000},
                 "unified": {"memory.max": memory, "memory.swap.max": 0, "pids.max": pids}}
        if self.free:
            name = self.free.pop()
        else:
            self.counter += 1
            name = f"j{self.counter}"
            for fd in self.dirs.values():
                os.mkdir(name, dir_fd=fd)
        for c, fd in self.dirs.items():
            for fname, value in files[c].items():
                # memsw/swap files are absent when swap accounting is off
                with contextlib.suppress(FileNotFoundError):
                    _write_at(fd, f"{name}/{fname}", str(value).encode())
        return name, self._oom_count(name)

    def join(self, job: str) -> None:
        for fd in self.dirs.values():
            _write_at(fd, f"{job}/cgroup.procs", b"0")

    def _oom_count(self, job: str) -> int:
        c = "memory" if "memory" in self.dirs else "unified"
        text = _read_at(self.dirs[c], f"{job}/{'memory.oom_control' if c == 'memory' else 'memory.events'}")
        return sum(int(v) for k, _, v in (line.partition(" ") for line in text.splitlines()) if k == "oom_kill")

    def oom_killed(self, job: str, baseline: int) -> bool:
        if self._oom_count(job) > baseline:
            return True
        return "memory" in self.dirs and int(_read_at(self.dirs["memory"], f"{job}/memory.failcnt") or 0) > 0

    def release(self, job: str) -> None:
        """Kill whatever is left in the job's cgroups; reuse them once empty (see `tick`)."""
        self.draining[job] = time.monotonic()
        self.tick()

    def tick(self) -> bool:
        """Move drained cgroups to the free list (a pids cgroup can count exited tasks for a while); True while
        some are still draining. Cgroups that stay busy for 10 s are removed instead of reused."""
        for job, since in list(self.draining.items()):
            busy = False
            for c, fd in self.dirs.items():
                for pid in _read_at(fd, f"{job}/cgroup.procs").split():
                    busy = True
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
                if c in ("pids", "unified") and _read_at(fd, f"{job}/pids.current").strip() not in ("", "0"):
                    busy = True
            if not busy:
                del self.draining[job]
                self.free.append(job)
            elif time.monotonic() - since > 10:
                del self.draining[job]
                self._rmdir(job)
        return bool(self.draining)

    def remove_all(self, patience: float) -> None:
        end = time.monotonic() + patience
        while self.tick() and time.monotonic() < end:
            time.sleep(0.02)
        for job in self.free + list(self.draining):
            self._rmdir(job)
        self.free, self.draining = [], {}

    def _rmdir(self, job: str) -> None:
        for fd in self.dirs.values():
            with contextlib.suppress(OSError):
                os.rmdir(job, dir_fd=fd)


def _write_at(dir_fd: int, name: str, data: bytes) -> None:
    fd = os.open(name, os.O_WRONLY, dir_fd=dir_fd)
    try:
        _write_all(fd, data)
    finally:
        os.close(fd)


def _write_all_path(path: str, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)


def _read_path(path: str) -> str:
    with open(path) as fh:
        return fh.read()


def _read_at(dir_fd: int, name: str) -> str:
    try:
        fd = os.open(name, os.O_RDONLY, dir_fd=dir_fd)
    except FileNotFoundError:
        return ""
    try:
        return os.read(fd, 1 << 16).decode()
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------------------------- program
def run_program(job: dict, cfg: dict, fds: dict, cgroups: Cgroups) -> None:
    """Child side (never returns): harden this process, load the model's code, answer calls with plain data."""
    resp = fds["resp_w"]
    send = lambda obj: _write_all(resp, wire.frame(obj))
    try:
        _harden(job, cfg, fds, cgroups)
    except BaseException as exc:  # our fault: report it as such, never run the code half-isolated
        send({"t": "setup_error", "detail": f"{type(exc).__name__}: {exc}"})
        os._exit(70)
    mode = job["mode"]
    ns = {"__name__": "__main__" if mode == "stdio" else "solution", "__builtins__": builtins}
    try:
        code = compile(job["code"], "<solution>", "exec")
    except MemoryError:
        send({"t": "load_error", "category": "memory", "detail": "MemoryError while compiling"})
        os._exit(1)
    except BaseException as exc:
        send({"t": "load_error", "category": "syntax_error", "detail": f"{type(exc).__name__}: {exc}"[:500]})
        os._exit(1)
    try:
        exec(code, ns)
    except SystemExit as exc:
        if mode != "stdio" or exc.code not in (None, 0):
            send({"t": "load_error", "category": "runtime_error", "detail": f"SystemExit({exc.code!r})"[:500]})
            os._exit(1)
    except BaseException as exc:
        cat = "memory" if isinstance(exc, MemoryError) else "runtime_error"
        send({"t": "load_error", "category": cat, "detail": f"{type(exc).__name__}: {exc}"[:500]})
        os._exit(1)
    if mode == "stdio":
        sys.stdout.flush()
        send({"t": "done"})
        os._exit(0)
    names = [k for k, v in list(ns.items()) if callable(v) and not k.startswith("__")]
    entry = job["entry_point"]
    if not callable(ns.get(entry)):
        send({"t": "load_error", "category": "runtime_error", "detail": f"entry point {entry!r} is not defined"})
        os._exit(1)
    send({"t": "loaded", "names": names})
    _serve(ns, fds["req_r"], send)


def _serve(ns: dict, req: int, send) -> None:
    reader = wire.FrameReader()
    while True:
        data = os.read(req, 1 << 16)
        if not data:
            break
        for msg in reader.feed(data):
            try:
                result = ns[msg["name"]](*wire.decode(msg["args"]))
                try:
                    tree = wire.encode(result)
                except (ValueError, RecursionError):
                    tree = {"__unserialisable__": type(result).__name__}
                send({"t": "result", "seq": msg["seq"], "ok": tree})
            except BaseException as exc:
                send({"t": "result", "seq": msg["seq"], "exc": type(exc).__name__, "detail": str(exc)[:300]})
    with contextlib.suppress(BaseException):
        sys.stdout.flush()
    os._exit(0)


def _harden(job: dict, cfg: dict, fds: dict, cgroups: Cgroups) -> None:
    lim = job["limits"]
    os.setsid()  # kill(0, ...) from the program reaches only its own group
    if cfg["namespaces"]:
        _jail.mount("proc", "/proc", "proc", _jail.MS_NOSUID | _jail.MS_NODEV | _jail.MS_NOEXEC)
        _jail.mount("sbx-tmp", "/tmp", "tmpfs", _jail.MS_NOSUID | _jail.MS_NODEV,
                    f"size={lim['disk_mb']}m,mode=0700,uid={cfg['uid']},gid={cfg['gid']}")
    if cgroups.dirs:
        cgroups.join(job["cg"])
    stdin = os.open("/dev/null", os.O_RDONLY)
    if job.get("stdin"):
        stdin = os.memfd_create("stdin")
        _write_all(stdin, job["stdin"].encode())
        os.lseek(stdin, 0, os.SEEK_SET)
    os.dup2(stdin, 0)
    os.dup2(fds["out_w"], 1)
    os.dup2(fds["err_w"], 2)
    _close_except({0, 1, 2, fds["req_r"], fds["resp_w"]})
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGALRM, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    mem = lim["memory_mb"] << 20
    _jail.set_rlimits({"RLIMIT_AS": mem, "RLIMIT_DATA": mem, "RLIMIT_CPU": int(lim["timeout"]) + 1,
                       "RLIMIT_FSIZE": lim["disk_mb"] << 20, "RLIMIT_NOFILE": 64, "RLIMIT_CORE": 0,
                       "RLIMIT_MEMLOCK": 0, "RLIMIT_MSGQUEUE": 0})
    if cfg["drop_uid"]:
        _jail.drop_privileges(cfg["uid"], cfg["gid"])
        if not cgroups.dirs:
            _jail.set_rlimits({"RLIMIT_NPROC": 64})  # fallback only: it counts every process of the uid
    _jail.prctl(_jail.PR_SET_PDEATHSIG, signal.SIGKILL)
    _jail.prctl(_jail.PR_SET_DUMPABLE, 0)
    os.chdir("/tmp" if cfg["namespaces"] else job["workdir"])
    os.environ.clear()
    os.environ.update({"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8", "TMPDIR": "/tmp"})
    if cfg["seccomp"]:
        _jail.install_seccomp(bytes.fromhex(cfg["seccomp"]))
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8", errors="replace")
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8", errors="backslashreplace")
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8", errors="backslashreplace",
                                  write_through=True)


# ----------------------------------------------------------------------------------------------- supervisor
class Supervisor:
    """Trusted parent of one program: deadline, output caps, relaying frames; decides how the run ended."""

    def __init__(self, job: dict, cfg: dict, z_in: int, z_out: int, cgroups: Cgroups):
        self.job, self.cfg, self.z_in, self.z_out, self.cgroups = job, cfg, z_in, z_out, cgroups
        self.lim = job["limits"]
        self.out, self.err = bytearray(), bytearray()
        self.out_total = 0
        self.ending = None  # (category, detail) once decided by us
        self.load = None
        self.pending_calls = list(job.get("calls") or [])
        self.calls_open = 0

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
        pid = os.fork()
        if pid == 0:
            try:
                run_program(job, self.cfg, fds, self.cgroups)
            finally:
                os._exit(70)
        self.pid = pid
        for fd in fds.values():
            os.close(fd)
        self.req_w = pipes["req"][1]
        status = self._loop(pipes["out"][0], pipes["err"][0], pipes["resp"][0])
        self._finish(status)

    def _emit(self, obj: dict) -> None:
        obj["id"] = self.job["id"]
        _write_all(self.z_out, wire.frame(obj))

    def _kill(self, category: str, detail: str) -> None:
        if self.ending is None:
            self.ending = (category, detail)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)  # PID 1 of its namespace: the kernel kills the whole tree

    def _send_call(self, msg: dict) -> None:
        # If the program is gone, its ending is reported when the pipes close.
        with contextlib.suppress(OSError):
            _write_all(self.req_w, wire.frame({"seq": msg["seq"], "name": msg["name"], "args": msg["args"]}))

    def _on_program(self, msg: dict) -> None:
        t = msg.get("t")
        if t == "setup_error":
            self._kill("sandbox_error", msg.get("detail", ""))
        elif t == "load_error":
            self.load = msg
        elif t == "loaded":
            self._emit({"t": "loaded", "names": [str(n) for n in msg.get("names", [])][:1000]})
            self._next_call()
        elif t == "result":
            if self.job["mode"] == "call":
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


    def _loop(self, out_r: int, err_r: int, resp_r: int) -> int:
        sel = selectors.DefaultSelector()
        for fd, name in ((out_r, "out"), (err_r, "err"), (resp_r, "resp"), (self.z_in, "z")):
            sel.register(fd, selectors.EVENT_READ, name)
        reader, zreader = wire.FrameReader(self.lim["output_bytes"] + (1 << 20)), wire.FrameReader()
        deadline = self.t0 + self.lim["timeout"]
        open_fds = 3
        while open_fds:
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                self._kill("timeout", f"wall-clock limit of {self.lim['timeout']}s reached")
                deadline = float("inf")
                continue
            for key, _ in sel.select(min(timeout, 3600)):
                name = key.data
                data = os.read(key.fd, 1 << 16)
                if name == "z":
                    if not data:  # the zygote went away: stop the program
                        sel.unregister(key.fd)
                        self._kill("sandbox_error", "runner lost its zygote")
                        continue
                    for msg in zreader.feed(data):
                        if msg["t"] == "call":
                            self._send_call(msg)
                        elif msg["t"] == "finish":
                            self._close_req()
                    continue
                if not data:
                    sel.unregister(key.fd)
                    os.close(key.fd)
                    open_fds -= 1
                    continue
                if name == "resp":
                    try:
                        msgs = reader.feed(data)
                    except ValueError:
                        self._kill("runtime_error", "program wrote an oversized or malformed result frame")
                        continue
                    for msg in msgs:
                        if type(msg) is not dict:
                            self._kill("runtime_error", "program wrote a malformed result frame")
                        else:
                            self._on_program(msg)
                else:
                    self._on_output(name, data)
        _, status = os.waitpid(self.pid, 0)
        return status

    def _finish(self, status: int) -> None:
        self._close_req()
        oom = bool(self.cgroups.dirs) and self.cgroups.oom_killed(self.job["cg"], self.job["oom0"])
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
        if self.ending is not None:
            category, detail = self.ending
        elif oom:
            category, detail = "memory", "killed by the memory cgroup"
        elif sig == signal.SIGXCPU:
            category, detail = "timeout", "CPU-time limit reached"
        elif self.load is not None and self.load["t"] == "load_error":
            category, detail = self.load["category"], self.load.get("detail", "")
        elif sig:
            category, detail = "runtime_error", f"killed by signal {signal.Signals(sig).name}"
        elif self.job["mode"] == "stdio" and (self.load is None or code != 0):
            category, detail = "runtime_error", f"exited with status {code} before finishing"
        else:
            category, detail = "ok", f"exit status {code}"
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
