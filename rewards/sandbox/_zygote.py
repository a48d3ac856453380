"""The zygote: a small trusted process that sets up the shared isolation once and relays jobs to slots.

Loaded by source under the system Python (see `pool.py`); speaks length-prefixed JSON frames on
stdin/stdout with the parent. It never runs model code. It relays jobs with their expectations to the slots
(`_slot.py`), so its heap holds them: it forks nothing after its first job; slots come from a template forked
before that.
"""

import contextlib
import gc
import os
import selectors
import signal
import socket
import sys
import time

from rewards.sandbox import _cgroups, _jail, _slot, wire
from rewards.sandbox._jail import close_except, write_all

# Imported once here so that neither test code (run by supervisors) nor programs pay for them per job;
# every process forked from the zygote starts with them loaded (random reseeds itself after a fork).
PRELOAD = ("base64", "bisect", "collections", "copy", "functools", "hashlib", "heapq", "itertools", "math", "operator",
           "random", "re", "string", "typing")


def boot() -> None:
    """Entry point (see `pool._BOOT`): read the configuration and run the zygote. Without root, where the kernel
    allows it, first enter a user namespace in which the caller is uid 65534, with new PID, mount, network, IPC and
    UTS namespaces, and run the zygote as PID 1 of that PID namespace: there it can mount, make namespaces and
    proc, as root can; this process only waits for it."""
    cfg = wire.FrameReader().feed(os.read(0, 1 << 20))[0]
    cfg["rootless"], cfg["rootless_error"] = False, "running as root"
    if os.getuid() != 0 and cfg["want_namespaces"]:
        try:
            _jail.enter_user_namespace(cfg["uid"], cfg["gid"], _jail.CLONE_NEWPID | _ROOTLESS_NS)
            cfg["rootless"] = True
        except OSError as exc:
            cfg["rootless_error"] = f"no user namespace: {exc}"
    if cfg["rootless"] and os.fork():
        _, status = os.waitpid(-1, 0)
        code = os.waitstatus_to_exitcode(status)
        os._exit(code if code >= 0 else 128 - code)
    if cfg["rootless"]:
        _jail.prctl(_jail.PR_SET_PDEATHSIG, signal.SIGKILL)
    main(cfg)


_ROOTLESS_NS = _jail.CLONE_NEWNS | _jail.CLONE_NEWNET | _jail.CLONE_NEWIPC | _jail.CLONE_NEWUTS


def setup(cfg: dict) -> dict:
    """Activate every layer the kernel allows; returns {layer: None if active else the reason it is not}."""
    layers = {}
    cfg["namespaces"] = False
    layers["namespaces"] = "disabled by the caller"
    if cfg["rootless"]:
        cfg["namespaces"] = True  # entered by boot()
        layers["user_namespace"] = None
    elif cfg["want_namespaces"]:
        try:
            _jail.unshare(_ROOTLESS_NS)
            cfg["namespaces"] = True
        except OSError as exc:
            layers["namespaces"] = f"{exc} ({cfg['rootless_error']})"
    cgroups = _cgroups.Cgroups(cfg["want_cgroups"], cfg["max_concurrency"])
    layers["cgroups"] = cgroups.error
    cfg["cgroup_paths"] = dict(cgroups.paths)
    # Without cgroups in a user namespace, each program gets a user namespace of its own, in which RLIMIT_NPROC
    # counts its processes alone (the kernel counts processes per user namespace and uid).
    cfg["process_userns"] = cfg["rootless"] and not cgroups.dirs
    if cfg["process_userns"]:
        layers["process_rlimits"] = None
    if cfg["namespaces"]:
        # Our own PID namespace, opened while /proc is still the host's: forkers return to it after each program
        # (setns) so that the next unshare(CLONE_NEWPID) is allowed.
        cfg["pidns_fd"] = os.open("/proc/self/ns/pid", os.O_RDONLY)
        try:
            prefix = os.path.realpath(sys.base_prefix)
            extra = () if prefix.startswith(("/usr/", "/bin", "/lib")) or prefix == "/usr" else (prefix,)
            _jail.build_root("/tmp", extra, proc=cfg["rootless"])  # /tmp of our mount namespace, as the staging point
            layers.update(namespaces=None, readonly_root=None)
        except OSError as exc:
            cfg["namespaces"] = False
            layers.update(namespaces=f"root setup failed: {exc}", readonly_root=str(exc))
    else:
        layers["readonly_root"] = "needs namespaces"
    cfg["drop_uid"] = os.getuid() == 0 and cfg["want_uid_drop"] and not cfg["rootless"]
    cfg["drop_caps"] = cfg["rootless"] and cfg["want_uid_drop"]
    layers["uid_drop"] = None if cfg["drop_uid"] or cfg["drop_caps"] else \
        "disabled, or not root: programs run as the calling user"
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
        # The variants jobs may ask for (`Job.seccomp_allow`), built once here.
        cfg["seccomp_variants"] = {name: _jail.SeccompFilter(_jail.seccomp_program(allow=(name,)))
                                   for name in _jail.ALLOWABLE}
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
    """Keeps `max_concurrency` persistent slots busy with queued jobs; relays their frames."""

    def __init__(self, cfg: dict, cgroups):
        self.cfg, self.cgroups = cfg, cgroups
        self.queue = []
        self.slots = {}  # fd the slot writes frames to -> slot dict(pidfd, job_w, out_r, reader, job, deadline)
        self.running = {}  # job id -> slot
        self.sel = selectors.DefaultSelector()
        self.out = os.dup(1)
        os.dup2(os.open("/dev/null", os.O_RDWR), 1)
        self.next_tick = 0.0
        self.template = self._fork_template()

    def _fork_template(self) -> socket.socket:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            code = 70
            try:
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                keep = {2, theirs.fileno(), *self.cgroups.dirs.values()}
                if self.cfg.get("pidns_fd") is not None:
                    keep.add(self.cfg["pidns_fd"])
                close_except(keep)
                _slot.template_main(self.cfg, self.cgroups, theirs.fileno())
                code = 0
            finally:
                os._exit(code)
        theirs.close()
        mine.settimeout(30)
        return mine

    def emit(self, obj: dict) -> None:
        write_all(self.out, wire.frame(obj))

    def serve(self) -> None:
        reader = wire.TrustedReader()
        self.sel.register(0, selectors.EVENT_READ, None)
        for _ in range(self.cfg["max_concurrency"]):
            self._spawn_slot()
        alive = True
        while alive or self.running or self.queue:
            self._launch()
            for key, _ in self.sel.select(self._tick()):
                if key.data is None:
                    data = os.read(0, 1 << 16)
                    if not data:
                        alive = False
                        self.sel.unregister(0)
                        self._abort_all()
                        continue
                    for msg in reader.feed(data):
                        alive = self._on_parent(msg) and alive
                elif key.fd in self.slots:  # not retired earlier in this round
                    self._on_slot(self.slots[key.fd])
            self._reap()
        for slot in list(self.slots.values()):
            self._retire(slot, None, respawn=False)
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

    # -- slots --------------------------------------------------------------------------------------------
    def _spawn_slot(self) -> None:
        self.template.send(b"s")
        _, fds, _, _ = socket.recv_fds(self.template, 16, 3)
        if len(fds) < 2:
            raise OSError("the slot template did not answer")
        job_w, out_r, *pidfd = fds
        slot = dict(pidfd=pidfd[0] if pidfd else None, job_w=job_w, out_r=out_r, reader=wire.FrameReader(),
                    job=None, deadline=float("inf"))
        self.slots[out_r] = slot
        self.sel.register(out_r, selectors.EVENT_READ, "slot")

    def _launch(self) -> None:
        idle = [s for s in self.slots.values() if s["job"] is None]
        while self.queue and idle:
            job = self.queue.pop(0)
            job["cg"], job["oom0"] = None, 0
            try:
                if self.cgroups.dirs:
                    lim = job["limits"]
                    job["cg"], job["oom0"] = self.cgroups.acquire((lim["memory_mb"] + 64) << 20, lim["max_processes"])
            except OSError as exc:
                self.emit({"t": "end", "id": job["id"], "category": "sandbox_error", "detail": f"cgroup: {exc}"})
                continue
            slot = idle.pop()
            # The supervisor kills the program at its deadline; the grace covers judging a full answer budget on a
            # loaded machine. Past it, the supervisor itself is stuck (our bug): the slot is replaced.
            slot.update(job=job["id"], cg=job["cg"], deadline=time.monotonic() + job["limits"]["timeout"] + 15.0)
            self.running[job["id"]] = slot
            with contextlib.suppress(OSError):  # if the slot died, its closed output retires it
                write_all(slot["job_w"], wire.reframe(job))

    def _on_slot(self, slot: dict) -> None:
        data = os.read(slot["out_r"], 1 << 16)
        if not data:
            self._retire(slot, "supervisor exited without a verdict" if slot["job"] is not None else None)
            return
        try:
            frames = slot["reader"].feed(data)
        except ValueError as exc:  # a bug of ours: the supervisor is trusted, but one slot must not stop the rest
            self._retire(slot, f"supervisor wrote a malformed frame ({exc})")
            return
        for msg in frames:
            if type(msg) is not dict or msg.get("id") != slot["job"]:
                continue
            recycle = msg.pop("recycle", False)
            self.emit(msg)
            if msg.get("t") == "end":
                self._job_done(slot)
                if recycle:  # it grew past its recycling size: a fresh slot from the template takes its place
                    self._retire(slot, None)
                    return

    def _job_done(self, slot: dict) -> None:
        self.running.pop(slot["job"], None)
        if self.cgroups.dirs and slot.get("cg"):
            self.cgroups.release(slot["cg"])
        slot.update(job=None, cg=None, deadline=float("inf"))

    def _retire(self, slot: dict, error: str | None, respawn: bool = True) -> None:
        """Kill a slot (its forker and program die with it: parent-death signals) and replace it."""
        if slot["pidfd"] is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(slot["pidfd"], signal.SIGKILL)
            os.close(slot["pidfd"])
        del self.slots[slot["out_r"]]
        self.sel.unregister(slot["out_r"])
        for fd in (slot["out_r"], slot["job_w"]):
            os.close(fd)
        if slot["job"] is not None:
            self.emit({"t": "end", "id": slot["job"], "category": "sandbox_error", "detail": error or "slot retired"})
            self._job_done(slot)
        if respawn:
            self._spawn_slot()

    def _tick(self) -> float:
        now = time.monotonic()
        for slot in list(self.slots.values()):
            if now > slot["deadline"]:
                self._retire(slot, "supervisor missed its deadline")
        deadlines = [s["deadline"] - now for s in self.slots.values()] + [1.0]
        # Draining cgroups are polled every 50 ms, not on every wake-up (each poll reads several files per cgroup).
        if self.cgroups.dirs and self.cgroups.draining:
            if now >= self.next_tick:
                self.next_tick = now + 0.05
                self.cgroups.tick()
            deadlines.append(self.next_tick - now)
        return max(0.0, min(deadlines))

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
        for slot in list(self.slots.values()):
            if slot["job"] is not None:
                self._retire(slot, "sandbox shut down", respawn=False)


def main(cfg: dict) -> None:
    layers, cgroups = setup(cfg)
    for name in PRELOAD:
        with contextlib.suppress(ImportError):
            __import__(name)
    # Objects that exist now are never collected: children's collections then skip them instead of touching
    # (and so copying) every page the zygote shares with them after the fork.
    gc.collect()
    gc.freeze()
    # Heap memory freed during start-up (compiling our sources) goes back to the kernel: fewer pages for every fork
    # to copy the page-table entries of and for every program's exit to unmap.
    _jail.malloc_trim()
    _jail.set_name("sbx-zygote")
    zygote = Zygote(cfg, cgroups)
    zygote.emit({"t": "ready", "layers": layers, "cgroup_paths": cfg["cgroup_paths"], "pid": os.getpid()})
    try:
        zygote.serve()
    finally:
        sys.stderr.flush()
