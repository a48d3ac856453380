"""Per-job cgroups for the sandbox runner (stdlib only; loaded into the runner by source, see `pool.py`).

The zygote owns one base directory per controller and hands each job a child cgroup: an empty one from
the free list, or a new one. A pids cgroup keeps counting exited tasks for a while, so released cgroups
drain before reuse (`tick`), and the limit files are rewritten only when a job asks for other limits.
A released cgroup is reused only once its memory charge is back to zero (up to the kernel's per-CPU charge
batches): memory a program left charged (page cache, a segment that outlived it) must not count against the next
program; the charge is reclaimed once, and a cgroup that keeps one is removed instead.

All the programs' cgroups sit under one base, which the CPU scheduler weighs as one entity: its weight is that of
as many processes as programs run at once, so that on a loaded machine they get the share that as many plain
processes would (with the default weight they shared the CPU of one).
"""

import contextlib
import os
import signal
import time

from rewards.sandbox._jail import write_all

CGROUP_ROOT = "/sys/fs/cgroup"


class Cgroups:
    """Per-job cgroups (v1 memory/pids/cpu here; v2 when the unified hierarchy has the controllers)."""

    def __init__(self, want: bool, programs: int = 1):
        self.dirs = {}  # controller -> fd of our base directory
        self.paths = {}
        self.programs = programs
        self.free, self.draining, self.counter = [], {}, 0
        self.emptied = set()  # draining cgroups whose leftover charge was reclaimed once
        # Charges the kernel keeps per CPU in batches of 64 pages (memcg "stock"), plus a few kernel pages.
        self.residue = (64 * (os.cpu_count() or 1) + 16) * 4096
        self.applied = {}  # job cgroup -> (memory, pids) its limit files hold
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
        name = f"rlwork-sbx-{_host_pid()}"
        v1 = [c for c in ("memory", "pids", "cpu") if os.path.isdir(f"{CGROUP_ROOT}/{c}") and c in own]
        if "memory" in v1 and "pids" in v1:
            for c in v1:
                base = f"{CGROUP_ROOT}/{c}{own[c].rstrip('/')}/{name}"
                _make_base(base)
                self.paths[c] = base
                self.dirs[c] = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
            if "cpu" in self.dirs:
                shares = int(_read_at(self.dirs["cpu"], "cpu.shares") or 1024)
                _write_at(self.dirs["cpu"], "cpu.shares", str(shares * max(1, self.programs)).encode())
            return
        ctl = f"{CGROUP_ROOT}/cgroup.controllers"
        if os.path.exists(ctl) and {"memory", "pids"} <= set(_read_path(ctl).split()):
            parent = f"{CGROUP_ROOT}{own.get('unified', '/').rstrip('/')}"
            _write_path(f"{parent}/cgroup.subtree_control", b"+memory +pids")
            base = f"{parent}/{name}"
            _make_base(base)
            _write_path(f"{base}/cgroup.subtree_control", b"+memory +pids")
            self.v2, self.paths["unified"] = True, base
            self.dirs["unified"] = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
            return
        raise OSError("no usable memory+pids cgroup controllers")

    def acquire(self, memory: int, pids: int) -> tuple[str, list]:
        """A cgroup for one job. Returns (name, memory-event baseline for `oom_killed`)."""
        if self.free:
            name = self.free.pop()
        else:
            self.counter += 1
            name = f"j{self.counter}"
            for fd in self.dirs.values():
                os.mkdir(name, dir_fd=fd)
        if self.applied.get(name) != (memory, pids):
            v1_memory = {"memory.limit_in_bytes": memory, "memory.memsw.limit_in_bytes": memory}
            if memory > self.applied.get(name, (memory, 0))[0]:  # v1 refuses a memory limit above memory+swap
                v1_memory = dict(reversed(v1_memory.items()))
            files = {"memory": v1_memory,
                     "pids": {"pids.max": pids}, "cpu": {"cpu.cfs_period_us": 100000, "cpu.cfs_quota_us": 100000},
                     "unified": {"memory.max": memory, "memory.swap.max": 0, "pids.max": pids}}
            for c, fd in self.dirs.items():
                for fname, value in files[c].items():
                    # memsw/swap files are absent when swap accounting is off
                    with contextlib.suppress(FileNotFoundError):
                        _write_at(fd, f"{name}/{fname}", str(value).encode())
            self.applied[name] = (memory, pids)
        return name, self._memory_events(name)

    def join(self, job: str) -> None:
        for fd in self.dirs.values():
            _write_at(fd, f"{job}/cgroup.procs", b"0")

    def _memory_events(self, job: str) -> list:
        """[oom kills, limit hits]: counters that only grow, compared against the job's baseline."""
        c = "memory" if "memory" in self.dirs else "unified"
        text = _read_at(self.dirs[c], f"{job}/{'memory.oom_control' if c == 'memory' else 'memory.events'}")
        kills = sum(int(v) for k, _, v in (line.partition(" ") for line in text.splitlines()) if k == "oom_kill")
        hits = int(_read_at(self.dirs["memory"], f"{job}/memory.failcnt") or 0) if c == "memory" else 0
        return [kills, hits]

    def oom_killed(self, job: str, baseline: list) -> bool:
        return any(now > then for now, then in zip(self._memory_events(job), baseline, strict=True))

    def release(self, job: str) -> None:
        """Kill whatever is left in the job's cgroups at the next `tick`; reuse them once empty."""
        self.draining[job] = time.monotonic()

    def tick(self) -> bool:
        """Move drained cgroups to the free list (a pids cgroup can count exited tasks for a while; memory must be
        uncharged); True while some are still draining. Cgroups that stay busy for 10 s, or keep a memory charge
        after one reclaim, are removed instead of reused."""
        for job, since in list(self.draining.items()):
            busy = False
            for c, fd in self.dirs.items():
                for pid in _read_at(fd, f"{job}/cgroup.procs").split():
                    busy = True
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
                if c in ("pids", "unified") and _read_at(fd, f"{job}/pids.current").strip() not in ("", "0"):
                    busy = True
            charged = not busy and self.charged(job) > self.residue
            if charged and job not in self.emptied:
                self.emptied.add(job)
                self._reclaim(job)
                charged = self.charged(job) > self.residue
            if not busy and not charged:
                del self.draining[job]
                self.emptied.discard(job)
                self.free.append(job)
            elif charged or time.monotonic() - since > 10:  # never reused: the next program would pay for it
                del self.draining[job]
                self.emptied.discard(job)
                self._rmdir(job)
        return bool(self.draining)

    def charged(self, job: str) -> int:
        """Bytes of memory charged to the job's cgroup."""
        c = "memory" if "memory" in self.dirs else "unified"
        text = _read_at(self.dirs[c], f"{job}/{'memory.usage_in_bytes' if c == 'memory' else 'memory.current'}")
        return int(text or 0)

    def _reclaim(self, job: str) -> None:
        c = "memory" if "memory" in self.dirs else "unified"
        with contextlib.suppress(OSError):  # v2 reports what it could not reclaim as EAGAIN
            _write_at(self.dirs[c], f"{job}/{'memory.force_empty' if c == 'memory' else 'memory.reclaim'}",
                      b"0" if c == "memory" else b"1G")

    def remove_all(self, patience: float) -> None:
        end = time.monotonic() + patience
        while self.tick() and time.monotonic() < end:
            time.sleep(0.02)
        for job in self.free + list(self.draining):
            self._rmdir(job)
        self.free, self.draining = [], {}

    def _rmdir(self, job: str) -> None:
        self.applied.pop(job, None)
        for fd in self.dirs.values():
            with contextlib.suppress(OSError):
                os.rmdir(job, dir_fd=fd)


def _host_pid() -> int:
    """Our PID as the host sees it (in a PID namespace of our own we are 1), from the host's /proc."""
    with contextlib.suppress(OSError, ValueError, IndexError), open("/proc/self/status") as fh:
        return int(next(line for line in fh if line.startswith("NSpid:")).split()[1])
    return os.getpid()


def _make_base(path: str) -> None:
    """mkdir the runner's base cgroup. One already there carries this live process's PID, so a runner that was
    killed before it could clean up left it (PIDs are reused): remove its empty job cgroups and it, then create it
    afresh. A job cgroup that still holds processes makes rmdir fail, and the layer is reported unavailable."""
    try:
        os.mkdir(path)
    except FileExistsError:
        for child in os.scandir(path):
            if child.is_dir(follow_symlinks=False):
                os.rmdir(child.path)
        os.rmdir(path)
        os.mkdir(path)


def _write_at(dir_fd: int, name: str, data: bytes) -> None:
    fd = os.open(name, os.O_WRONLY, dir_fd=dir_fd)
    try:
        write_all(fd, data)
    finally:
        os.close(fd)


def _write_path(path: str, data: bytes) -> None:
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
