"""The sandboxed program process: harden, load the model's code, answer call requests with plain data.

Runs in the child a slot's forker forks (see `_supervisor.py`); loaded into the runner by source. It
never sees expected outputs or test code: those reach the supervisor only after this fork. A program in another
language is compiled or executed from here once hardened (`_native.py`).
"""

import builtins
import contextlib
import io
import os
import signal
import socket
import struct
import sys

from rewards.sandbox import _jail, _native, wire
from rewards.sandbox._jail import write_all

# Set once in the forker, inherited by every program (see `_supervisor._forker`).
DEFAULT_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGALRM, signal.SIGCHLD)
ENVIRONMENT = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8", "TMPDIR": "/tmp"}
_SIGKILL = int(signal.SIGKILL)
MAX_NAMES, MAX_NAME = 256, 100  # what the supervisor accepts in a "loaded" frame
_FDS = struct.Struct("5i")  # five file descriptors in an SCM_RIGHTS message


def run_program(cfg: dict, job_r: int, ctl, cgroups) -> None:
    """Child side (never returns): wait for the job, hand the supervisor this process's pipes and pidfd, harden,
    load the model's code, answer calls with plain data."""
    _jail.prctl(_jail.PR_SET_PDEATHSIG, _SIGKILL)
    _jail.set_name("sbx-program")
    job = _read_job(job_r)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    req_r, req_w = os.pipe()
    resp_r, resp = os.pipe()
    pidfd = os.pidfd_open(os.getpid())  # PID 1 of its own namespace: its own pid there
    ctl.sendmsg([b"fds"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, _FDS.pack(out_r, err_r, req_w, resp_r, pidfd))])
    for fd in (out_r, err_r, req_w, resp_r, pidfd):
        os.close(fd)
    send = lambda obj: write_all(resp, wire.frame(obj))
    if job.get("language", "python") != "python" and job["mode"] == "call" and cfg["drop_uid"]:
        os.fchown(resp, cfg["uid"], cfg["gid"])  # a JVM harness opens its result pipe by path after the uid drop
    try:
        _harden(job, cfg, {"out_w": out_w, "err_w": err_w, "req_r": req_r, "resp_w": resp}, cgroups)
    except BaseException as exc:  # our fault: report it as such, never run the code half-isolated
        send({"t": "setup_error", "detail": f"{type(exc).__name__}: {exc}"})
        os._exit(70)
    if job.get("language", "python") != "python":
        _native.start(job, ENVIRONMENT, {"req_r": req_r, "resp_w": resp}, cfg["namespaces"])  # never returns
    # The last frame the supervisor trusts: from here on the model's code shares this process, and everything
    # on the channel is the program's word (a setup error is no longer accepted, nor any category but failures).
    send({"t": "armed"})
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
    names = [k for k, v in list(ns.items())
             if type(k) is str and k.isidentifier() and len(k) <= MAX_NAME and not k.startswith("__") and callable(v)]
    entry = job["entry_point"]
    if not callable(ns.get(entry)):
        send({"t": "load_error", "category": "runtime_error", "detail": f"entry point {entry!r} is not defined"})
        os._exit(1)
    send({"t": "loaded", "names": ([entry] + [n for n in names if n != entry])[:MAX_NAMES]})
    _serve(ns, req_r, send)


def _read_job(job_r: int) -> dict:
    reader = wire.TrustedReader()  # the slot's supervisor writes here (files as raw blobs)
    while True:
        data = os.read(job_r, 1 << 16)
        if not data:  # the slot is gone
            os._exit(0)
        frames = reader.feed(data)
        if frames:
            return frames[0]


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


def _harden(job: dict, cfg: dict, fds: dict, cgroups) -> None:
    lim = job["limits"]
    os.setsid()  # kill(0, ...) from the program reaches only its own group
    if cfg["namespaces"]:
        _jail.unshare(_jail.CLONE_NEWNS)  # its /proc and /tmp mounts live and die with it
        _jail.mount("proc", "/proc", "proc", _jail.MS_NOSUID | _jail.MS_NODEV | _jail.MS_NOEXEC)
        _jail.mount("sbx-tmp", "/tmp", "tmpfs", _jail.MS_NOSUID | _jail.MS_NODEV,
                    f"size={lim['disk_mb']}m,mode=0700,uid={cfg['uid']},gid={cfg['gid']}")
    if cgroups.dirs:
        cgroups.join(job["cg"])
    stdin = os.open("/dev/null", os.O_RDONLY)
    if job.get("stdin"):
        stdin = os.memfd_create("stdin")
        write_all(stdin, job["stdin"].encode())
        os.lseek(stdin, 0, os.SEEK_SET)
    os.dup2(stdin, 0)
    os.dup2(fds["out_w"], 1)
    os.dup2(fds["err_w"], 2)
    _jail.close_except({0, 1, 2, fds["req_r"], fds["resp_w"]})
    mem = (lim.get("address_space_mb") or lim["memory_mb"]) << 20
    _jail.set_rlimits({"RLIMIT_AS": mem, "RLIMIT_DATA": mem, "RLIMIT_CPU": int(lim["timeout"]) + 1,
                       "RLIMIT_FSIZE": lim["disk_mb"] << 20, "RLIMIT_NOFILE": lim.get("open_files", 64),
                       "RLIMIT_CORE": 0, "RLIMIT_MEMLOCK": 0, "RLIMIT_MSGQUEUE": 0})
    if cfg["drop_uid"]:
        _jail.drop_privileges(cfg["uid"], cfg["gid"])
        if not cgroups.dirs:
            _jail.set_rlimits({"RLIMIT_NPROC": 64})  # fallback only: it counts every process of the uid
    if cfg["process_userns"]:  # rootless without cgroups: its own user namespace, where NPROC counts it alone
        _jail.enter_user_namespace(cfg["uid"], cfg["gid"])
        _jail.set_rlimits({"RLIMIT_NPROC": lim["max_processes"]})
    if cfg["drop_caps"]:  # rootless: the uid is already 65534 here; the capabilities of the namespace go
        _jail.drop_capabilities()
    _jail.prctl(_jail.PR_SET_DUMPABLE, 0)
    os.chdir("/tmp" if cfg["namespaces"] else job["workdir"])
    if cfg["seccomp"]:
        allow = job.get("seccomp_allow") or ""
        (cfg["seccomp_variants"][allow] if allow else cfg["seccomp_filter"]).install()
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8", errors="replace")
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8", errors="backslashreplace")
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8", errors="backslashreplace",
                                  write_through=True)


