"""Kernel isolation primitives for the sandbox runner (stdlib + ctypes only; loaded into the runner by source).

Each function does one thing and raises OSError when the kernel refuses, so the runner can record
which layers are active instead of assuming them.
"""

import ctypes
import os
import resource
import struct

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
NS_FLAGS = CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, PR_SET_DUMPABLE = 1, 38, 22, 4
PR_CAPBSET_DROP, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 24, 47, 4
SECCOMP_MODE_FILTER = 2
_CAPABILITY_V3 = 0x20080522

_libc = ctypes.CDLL(None, use_errno=True)
_MACHINE = os.uname().machine


def _typed(name: str, *argtypes):
    """A libc function typed once, so that a call converts its arguments in C instead of building ctypes objects in
    Python each time (these calls run in every program between its fork and the model's code)."""
    fn = _libc[name]  # a new function object: _libc.<name> is shared and untyped
    fn.argtypes, fn.restype = argtypes, ctypes.c_int
    return fn


_c_int, _c_ulong, _c_str = ctypes.c_int, ctypes.c_ulong, ctypes.c_char_p
_prctl = _typed("prctl", _c_int, _c_ulong, _c_ulong, _c_ulong, _c_ulong)
_prctl_name = _typed("prctl", _c_int, _c_str, _c_ulong, _c_ulong, _c_ulong)
_unshare = _typed("unshare", _c_int)
_setns = _typed("setns", _c_int, _c_int)
_mount = _typed("mount", _c_str, _c_str, _c_str, _c_ulong, _c_str)


def _raise(what: str) -> None:
    err = ctypes.get_errno()
    raise OSError(err, f"{what}: {os.strerror(err)}")


def _check(ret: int, what: str) -> None:
    if ret != 0:
        _raise(what)


def unshare(flags: int) -> None:
    if _unshare(flags):
        _raise("unshare")


def setns(fd: int, nstype: int) -> None:
    if _setns(fd, nstype):
        _raise("setns")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: None if s is None else s.encode()
    if _mount(enc(source), enc(target), enc(fstype), flags, enc(data)):
        _raise(f"mount {target}")


def umount2(target: str, flags: int) -> None:
    _check(_libc.umount2(target.encode(), ctypes.c_int(flags)), f"umount {target}")


def pivot_root(new_root: str, put_old: str) -> None:
    nr = {"x86_64": 155, "aarch64": 41}[_MACHINE]
    _check(_libc.syscall(ctypes.c_long(nr), new_root.encode(), put_old.encode()), "pivot_root")


def prctl(option: int, arg: int) -> None:
    if _prctl(option, arg, 0, 0, 0):
        _raise(f"prctl {option}")


def malloc_trim() -> None:
    _libc.malloc_trim(0)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def close_except(keep: set) -> None:
    """Close every file descriptor not in keep."""
    low = 0
    for fd in sorted(keep) + [1 << 20]:
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1


def set_name(name: str) -> None:
    """The process name `ps` and `perf` show (PR_SET_NAME, at most 15 bytes)."""
    _prctl_name(15, name.encode()[:15], 0, 0, 0)


def set_rlimits(limits: dict) -> None:
    """Hard limits (soft = hard), so the program cannot raise them back."""
    for name, value in limits.items():
        resource.setrlimit(getattr(resource, name), (value, value))


def enter_user_namespace(uid: int, gid: int, flags: int = 0) -> None:
    """unshare a new user namespace (and the namespaces in flags, owned by it) in which the caller's uid and gid
    are uid and gid: allowed without privileges where the kernel allows unprivileged user namespaces. The caller
    holds every capability inside it until it drops them (`drop_capabilities`)."""
    outer_uid, outer_gid = os.geteuid(), os.getegid()
    unshare(CLONE_NEWUSER | flags)
    maps = (("setgroups", "deny"), ("uid_map", f"{uid} {outer_uid} 1"), ("gid_map", f"{gid} {outer_gid} 1"))
    for name, text in maps:
        fd = os.open(f"/proc/self/{name}", os.O_WRONLY)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def drop_capabilities() -> None:
    """Empty the bounding, ambient, effective, permitted and inheritable sets: nothing can give them back."""
    for cap in range(64):
        if _prctl(PR_CAPBSET_DROP, cap, 0, 0, 0):
            if ctypes.get_errno() == 22:  # EINVAL: past the last capability this kernel knows
                break
            _raise(f"dropping capability {cap} from the bounding set")
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    data = (_CapData * 2)()
    _check(_libc.capset(ctypes.byref(_CapHeader(_CAPABILITY_V3, 0)), data), "capset")


def drop_privileges(uid: int, gid: int) -> None:
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getuid() != uid or os.geteuid() != uid:
        raise OSError("uid drop did not take effect")


# Syscalls a scored program never needs: networking, tracing, namespaces, kernel keyrings, modules, io_uring, and
# SysV/POSIX message queues, semaphores and shared memory (all programs share one IPC namespace, and a segment
# outlives its program: it would carry one program's data to another and stay charged to a reused cgroup).
_DENY = {
    "x86_64": dict(socket=41, socketpair=53, connect=42, accept=43, bind=49, listen=50, accept4=288, ptrace=101,
                   mount=165, umount2=166, pivot_root=155, chroot=161, unshare=272, setns=308, add_key=248,
                   request_key=249, keyctl=250, bpf=321, perf_event_open=298, process_vm_readv=310,
                   process_vm_writev=311, kexec_load=246, init_module=175, finit_module=313, delete_module=176,
                   swapon=167, swapoff=168, reboot=169, userfaultfd=323, io_uring_setup=425, io_uring_enter=426,
                   io_uring_register=427, open_by_handle_at=304, name_to_handle_at=303, shmget=29, shmat=30,
                   shmctl=31, shmdt=67, semget=64, semop=65, semctl=66, semtimedop=220, msgget=68, msgsnd=69,
                   msgrcv=70, msgctl=71, mq_open=240, mq_unlink=241, mq_timedsend=242, mq_timedreceive=243,
                   mq_notify=244, mq_getsetattr=245),
    "aarch64": dict(socket=198, socketpair=199, connect=203, accept=202, bind=200, listen=201, accept4=242,
                    ptrace=117, mount=40, umount2=39, pivot_root=41, chroot=51, unshare=97, setns=268, add_key=217,
                    request_key=218, keyctl=219, bpf=280, perf_event_open=241, process_vm_readv=270,
                    process_vm_writev=271, kexec_load=104, init_module=105, finit_module=273, delete_module=106,
                    swapon=224, swapoff=225, reboot=142, userfaultfd=282, io_uring_setup=425, io_uring_enter=426,
                    io_uring_register=427, open_by_handle_at=265, name_to_handle_at=264, mq_open=180, mq_unlink=181,
                    mq_timedsend=182, mq_timedreceive=183, mq_notify=184, mq_getsetattr=185, msgget=186, msgctl=187,
                    msgrcv=188, msgsnd=189, semget=190, semctl=191, semtimedop=192, semop=193, shmget=194,
                    shmctl=195, shmat=196, shmdt=197),
}
_ARCH = {"x86_64": (0xC000003E, 56, 435), "aarch64": (0xC00000B7, 220, 435)}  # audit arch, clone, clone3
_RET_ALLOW, _RET_KILL, _EPERM, _ENOSYS = 0x7FFF0000, 0x80000000, 1, 38


ALLOWABLE = ("socketpair",)
"""Denied syscalls a job may ask to have allowed: a JVM's file channels need an anonymous socket pair (it cannot
address or reach anything; the network, SysV IPC and the rest stay denied)."""


def seccomp_program(machine: str | None = None, allow: tuple[str, ...] = ()) -> bytes:
    """Classic-BPF seccomp filter: wrong arch -> kill; denied syscalls and namespace-creating clone -> EPERM;
    clone3 -> ENOSYS (libc falls back to clone, whose flags we can inspect); everything else allowed.
    allow: names from ALLOWABLE taken off the denied list."""
    machine = machine or _MACHINE
    if machine not in _DENY:
        raise OSError(f"no seccomp syscall table for {machine}")
    if set(allow) - set(ALLOWABLE):
        raise ValueError(f"seccomp allow={allow}: only {ALLOWABLE} may be allowed")
    arch, nr_clone, nr_clone3 = _ARCH[machine]
    deny = sorted(nr for name, nr in _DENY[machine].items() if name not in allow)
    # (code, jt, jf, k) with jt/jf as symbolic labels resolved below.
    prog = [(0x20, 0, 0, 4), (0x15, 0, "kill", arch), (0x20, 0, 0, 0)]
    if machine == "x86_64":
        prog.append((0x35, "kill", 0, 0x40000000))  # x32 ABI syscall numbers
    prog += [(0x15, "eperm", 0, nr) for nr in deny]
    prog += [(0x15, "enosys", 0, nr_clone3), (0x15, 0, "allow", nr_clone), (0x20, 0, 0, 16),
             (0x45, "eperm", "allow", NS_FLAGS)]
    labels = {"allow": len(prog), "eperm": len(prog) + 1, "enosys": len(prog) + 2, "kill": len(prog) + 3}
    prog += [(0x06, 0, 0, _RET_ALLOW), (0x06, 0, 0, 0x00050000 | _EPERM), (0x06, 0, 0, 0x00050000 | _ENOSYS),
             (0x06, 0, 0, _RET_KILL)]
    out = b""
    for i, (code, jt, jf, k) in enumerate(prog):
        jt = labels[jt] - i - 1 if isinstance(jt, str) else jt
        jf = labels[jf] - i - 1 if isinstance(jf, str) else jf
        out += struct.pack("=HBBI", code, jt, jf, k)
    return out


class _Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class SeccompFilter:
    """A filter ready to install: built once (in the zygote), installed per program with a single prctl."""

    def __init__(self, program: bytes):
        self.buf = ctypes.create_string_buffer(program, len(program))
        self.fprog = _Fprog(len(program) // 8, ctypes.addressof(self.buf))
        self.address = ctypes.addressof(self.fprog)

    def install(self) -> None:
        prctl(PR_SET_NO_NEW_PRIVS, 1)
        if _prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, self.address, 0, 0):
            _raise("seccomp")


def install_seccomp(program: bytes) -> None:
    SeccompFilter(program).install()


# What the programs see of the host: system directories read-only, nothing else (no /home, /root, /tmp, /work).
SYSTEM_DIRS = ("/usr", "/lib", "/lib64", "/lib32", "/libx32", "/bin", "/sbin", "/etc")
DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")


def build_root(staging: str, extra_dirs: tuple = (), proc: bool = False) -> None:
    """Make a minimal read-only root from system directories and pivot into it (needs a private mount ns).

    extra_dirs: more host directories to show read-only (e.g. the interpreter's prefix when it is not in /usr).
    proc: mount a proc of our own PID namespace at /proc; in a user namespace the kernel lets a program mount its
    own proc only where a proc is already fully visible (and the host's is not kept).
    """
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount("sbx-root", staging, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    for path in SYSTEM_DIRS + tuple(extra_dirs):
        if os.path.islink(path) and path in SYSTEM_DIRS:
            os.symlink(os.readlink(path), staging + path)
        elif os.path.isdir(path):
            os.makedirs(staging + path, mode=0o755, exist_ok=True)
            mount(path, staging + path, None, MS_BIND | MS_REC)
            keep = MS_NOEXEC if os.statvfs(path).f_flag & os.ST_NOEXEC else 0  # a user namespace may not clear it
            mount(None, staging + path, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | keep)
    os.makedirs(staging + "/dev")
    for dev in DEVICES:
        open(staging + dev, "w").close()
        mount(dev, staging + dev, None, MS_BIND)
    for d in ("/proc", "/tmp", "/.old"):
        os.mkdir(staging + d)
    if proc:
        mount("proc", staging + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    pivot_root(staging, staging + "/.old")
    os.chdir("/")
    umount2("/.old", MNT_DETACH)
    os.rmdir("/.old")
    mount(None, "/", None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
