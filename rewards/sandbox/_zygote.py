"""The zygote: a small trusted process that sets up the shared isolation once and forks one supervisor per job.

Loaded by source under the system Python (see `pool.py`); speaks length-prefixed JSON frames on
stdin/stdout with the parent. It never runs model code and never receives expected outputs.
"""

import contextlib
import gc
import os
import selectors
import signal
import socket
import sys
import time

from rewards.sandbox import _cgroups, _jail, _supervisor, wire
from rewards.sandbox._jail import close_except, write_all

# Imported once here so that neither test code (run by supervisors) nor programs pay for them per job;
# every process forked from the zygote starts with them loaded (random reseeds itself after a fork).
PRELOAD = ("bisect", "collections", "copy", "functools", "hashlib", "heapq", "itertools", "math", "operator", "random",
           "re", "string", "typing")


def setup(cfg: dict) -> dict:
    """Activate every layer the kernel allows; returns {layer: None if active else the reason it is not}."""
    layers = {}
    cfg["namespaces"] = False
    layers["namespaces"] = "disabled by the caller"
    if cfg["want_namespaces"]:
        try:
            _jail.unshare(_jail.CLONE_NEWNS | _jail.CLONE_NEWNET | _jail.CLONE_NEWIPC | _jail.CLONE_NEWUTS)
            cfg["namespaces"] = True
        except OSError as exc:
            layers["namespaces"] = str(exc)
    cgroups = _cgroups.Cgroups(cfg["want_cgroups"])
    layers["cgroups"] = cgroups.error
    cfg["cgroup_paths"] = dict(cgroups.paths)
    if cfg["namespaces"]:
        try:
            prefix = os.path.realpath(sys.base_prefix)
            extra = () if prefix.startswith(("/usr/", "/bin", "/lib")) or prefix == "/usr" else (prefix,)
            _jail.build_root("/tmp", extra)  # /tmp of our private mount namespace, as the staging point
            layers.update(namespaces=None, readonly_root=None)
        except OSError as exc:
            cfg["namespaces"] = False
            layers.update(namespaces=f"root setup failed: {exc}", readonly_root=str(exc))
    else:
        layers["readonly_root"] = "needs namespaces"
    cfg["drop_uid"] = os.getuid() == 0 and cfg["want_uid_drop"]
    layers["uid_drop"] = None if cfg["drop_uid"] else "disabled, or not root: programs run as the calling user"
    cfg["seccomp"] = ""
    layers["seccomp"] = "disabled by the caller"
    if cfg["want_seccomp"]:
        _seccomp(cfg, layers)
    return layers, cgroups


def _seccomp(cfg: dict, layers: dict) -> None:
    try:
        cfg["seccomp"] = _jail.seccomp_program().hex()
        _probe_seccomp(cfg["seccomp"])
        cfg["seccomp_filter"] = _jail.SeccompFilter(bytes.fromhex(cfg["seccomp"]))
        layers["seccomp"] = None
    except OSError as exc:
        cfg["seccomp"] = ""
        layers["seccomp"] = str(exc)


def _probe_seccomp(program_hex: str) -> None:
    """Install the filter in a throwaway child and check that a socket() call is refused."""
    pid = os.fork()
    if pid == 0:
        try:
            _jail.install_seccomp(bytes.fromhex(program_hex))
            import socket
            try:
                socket.socket()
                os._exit(3)
            except OSError:
                os._exit(0)
        except BaseException:
            os._exit(4)
    _, status = os.waitpid(pid, 0)
    if not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0:
        raise OSError(f"seccomp probe failed (status {status})")


class Zygote:
    def __init__(self, cfg: dict, cgroups):
        self.cfg, self.cgroups = cfg, cgroups
        self.queue = []
        self.running = {}  # job id -> dict(pid, z_in_w, out_r, deadline, cg)
        self.by_fd = {}
        self.sel = selectors.DefaultSelector()
        self.counter = 0
        self.out = os.dup(1)
        os.dup2(os.open("/dev/null", os.O_RDWR), 1)
        # Assert-style jobs come with a channel (a socket to the parent) passed here as SCM_RIGHTS; the
        # zygote hands it to the job's supervisor and never reads from it (see `_supervisor.py`).
        self.fd_sock = socket.socket(fileno=cfg["fd_sock"])
        self.fd_sock.setblocking(False)
        self.channels = {}  # job id -> channel fd, until the job is launched
        self.next_tick = 0.0

    def emit(self, obj: dict) -> None:
        write_all(self.out, wire.frame(obj))

    def _recv_channel(self) -> bool:
        try:
            msg, fds, _, _ = socket.recv_fds(self.fd_sock, 64, 4)
        except BlockingIOError:
            return True
        for fd in fds[1:]:
            os.close(fd)
        if not msg or not fds:
            return bool(msg)
        self.channels[int(msg)] = fds[0]
        return True

    def serve(self) -> None:
        reader = wire.FrameReader()
        self.sel.register(0, selectors.EVENT_READ, None)
        self.sel.register(self.fd_sock, selectors.EVENT_READ, "fds")
        alive = True
        while alive or self.running or self.queue:
            self._launch()
            for key, _ in self.sel.select(self._tick()):
                if key.data == "fds":
                    if not self._recv_channel():
                        self.sel.unregister(self.fd_sock)
                elif key.data is None:
                    data = os.read(0, 1 << 16)
                    if not data:
                        alive = False
                        self.sel.unregister(0)
                        self._abort_all()
                        continue
                    for msg in reader.feed(data):
                        alive = self._on_parent(msg) and alive
                elif key.data in self.running:  # not retired earlier in this round
                    self._on_supervisor(key.data, key.fd)
            self._reap()
        self._reap()
        if self.cgroups.dirs:
            self.cgroups.remove_all(5.0)

    def _on_parent(self, msg: dict) -> bool:
        op = msg["op"]
        if op == "run":
            self.queue.append(msg)
        elif op == "shutdown":
            self._abort_all()
            return False
        return True

    def _launch(self) -> None:
        while self.queue and len(self.running) < self.cfg["max_concurrency"]:
            job = self.queue.pop(0)
            job["cg"], job["oom0"] = None, 0
            if job.get("channel"):
                job["channel"] = self._channel_of(job["id"])
            try:
                if self.cgroups.dirs:
                    lim = job["limits"]
                    job["cg"], job["oom0"] = self.cgroups.acquire((lim["memory_mb"] + 64) << 20, lim["max_processes"])
            except OSError as exc:
                self.emit({"t": "end", "id": job["id"], "category": "sandbox_error", "detail": f"cgroup: {exc}"})
                self._close_channel(job)
                continue
            z_in_r, z_in_w = os.pipe()
            out_r, out_w = os.pipe()
            pid = os.fork()
            if pid == 0:
                self._supervisor_child(job, z_in_r, out_w)
            os.close(z_in_r)
            os.close(out_w)
            self._close_channel(job)
            grace = job["limits"]["timeout"] + 5.0
            self.running[job["id"]] = dict(pid=pid, z_in_w=z_in_w, out_r=out_r, cg=job["cg"],
                                           deadline=time.monotonic() + grace, reader=wire.FrameReader(),
                                           ended=False)
            self.by_fd[out_r] = job["id"]
            self.sel.register(out_r, selectors.EVENT_READ, job["id"])

    def _channel_of(self, job_id: int) -> int:
        """The parent sends a job's channel before the job itself, so waiting for it here cannot block for long."""
        self.fd_sock.settimeout(10)
        try:
            while job_id not in self.channels:
                if not self._recv_channel():
                    raise OSError("the parent closed the channel socket")
        finally:
            self.fd_sock.setblocking(False)
        return self.channels.pop(job_id)

    def _close_channel(self, job: dict) -> None:
        if job.get("channel"):
            with contextlib.suppress(OSError):
                os.close(job["channel"])

    def _supervisor_child(self, job: dict, z_in: int, z_out: int) -> None:
        code = 70
        try:
            os.setsid()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            keep = {2, z_in, z_out, *self.cgroups.dirs.values()} | ({job["channel"]} if job.get("channel") else set())
            close_except(keep)
            _supervisor.Supervisor(job, self.cfg, z_in, z_out, self.cgroups).run()
            code = 0
        except BaseException as exc:
            try:
                frame = {"t": "end", "id": job["id"], "category": "sandbox_error", "detail": f"supervisor: {exc!r}"}
                write_all(z_out, wire.frame(frame))
            except BaseException:
                pass
        finally:
            os._exit(code)

    def _on_supervisor(self, job_id, fd: int) -> None:
        job = self.running[job_id]
        data = os.read(fd, 1 << 16)
        if data:
            for msg in job["reader"].feed(data):
                job["ended"] = job["ended"] or msg.get("t") == "end"
                self.emit(msg)
            return
        self._retire(job_id, None if job["ended"] else "supervisor exited without a verdict")

    def _retire(self, job_id, error: str | None) -> None:
        job = self.running.pop(job_id)
        self.sel.unregister(job["out_r"])
        os.close(job["out_r"])
        os.close(job["z_in_w"])
        if error:
            with contextlib.suppress(ProcessLookupError):
                os.kill(job["pid"], signal.SIGKILL)
            self.emit({"t": "end", "id": job_id, "category": "sandbox_error", "detail": error})
        if self.cgroups.dirs:
            self.cgroups.release(job["cg"])

    def _tick(self) -> float:
        now = time.monotonic()
        for job_id, job in list(self.running.items()):
            if now > job["deadline"]:
                self._retire(job_id, "supervisor missed its deadline")
        # Draining cgroups are polled every 50 ms, not on every wake-up (each poll reads several files per cgroup).
        if self.cgroups.dirs and self.cgroups.draining:
            if now >= self.next_tick:
                self.next_tick = now + 0.05
                self.cgroups.tick()
            return max(0.0, min([self.next_tick - now] + [j["deadline"] - now for j in self.running.values()]))
        return min([j["deadline"] - now for j in self.running.values()] + [1.0])

    def _reap(self) -> None:
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return

    def _abort_all(self) -> None:
        for job in self.queue:
            self.emit({"t": "end", "id": job["id"], "category": "sandbox_error", "detail": "sandbox shut down"})
        self.queue = []
        for fd in self.channels.values():
            os.close(fd)
        self.channels = {}
        for job_id in list(self.running):
            self._retire(job_id, "sandbox shut down")


def main() -> None:
    cfg = wire.FrameReader().feed(os.read(0, 1 << 20))[0]
    layers, cgroups = setup(cfg)
    for name in PRELOAD:
        with contextlib.suppress(ImportError):
            __import__(name)
    # Objects that exist now are never collected: children's collections then skip them instead of touching
    # (and so copying) every page the zygote shares with them after the fork.
    gc.collect()
    gc.freeze()
    zygote = Zygote(cfg, cgroups)
    zygote.emit({"t": "ready", "layers": layers, "cgroup_paths": cfg["cgroup_paths"], "pid": os.getpid()})
    try:
        zygote.serve()
    finally:
        sys.stderr.flush()
