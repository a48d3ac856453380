"""Slots: persistent trusted processes that run one job at a time; their forkers; the template that makes them.

Runs under the system Python, loaded by source (see `pool.py`). Process tree:

    zygote   trusted; private mount/net/ipc/uts namespaces, minimal read-only root; relays jobs and verdicts
      template            trusted; forked before the zygote read any job; forks slots on request, nothing else
        slot (supervisor)  trusted, persistent, own session, capped memory; one job at a time (`_supervisor.py`)
          forker           trusted, persistent; keeps the next program forked ahead, reaps it, reports its status
            program        PID 1 of its own PID and mount namespaces; cgroups, hard rlimits, nobody, seccomp

Memory that held a job never reaches a program: the template has seen no job, a slot's forker is forked when
the slot starts (before its first job) and never receives one, and each program reads only its own job. A slot
that dies is replaced by a fresh one from the template, not by a fork of the zygote (whose heap has relayed other
jobs' code, tests and answers). The program, forked ahead, reads its own job (code, limits; no expectations) and,
still running our code and before it hardens itself, hands the supervisor its pipes and a pidfd (SCM_RIGHTS).
"""

import contextlib
import os
import signal
import socket

from rewards.sandbox import _jail, _program, wire
from rewards.sandbox._jail import write_all
from rewards.sandbox._supervisor import Supervisor


class _Slot:
    """The persistent side of a slot: links to the zygote and to the forker."""

    def __init__(self, cfg: dict, cgroups, z_in: int, z_out: int):
        self.cfg, self.cgroups, self.z_in, self.z_out = cfg, cgroups, z_in, z_out
        self.zygote_gone = False
        ctl_slot, ctl_forker = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        job_r, self.job_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 70
            try:
                _jail.close_except({2, job_r, ctl_forker.fileno(), *_inherited(cfg, cgroups)})
                _forker(cfg, cgroups, job_r, ctl_forker)
                code = 0
            finally:
                os._exit(code)
        ctl_forker.close()
        os.close(job_r)
        self.ctl = ctl_slot

    def fork_program(self, job: dict) -> list:
        """Hand the job to the program the forker keeps ready; returns its [out_r, err_r, req_w, resp_r, pidfd]."""
        write_all(self.job_w, wire.reframe(job))  # read by our own code in the program, before it hardens
        self.ctl.settimeout(30)
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


def _inherited(cfg: dict, cgroups) -> set:
    """File descriptors every process of a slot keeps: the cgroup directories and the zygote's PID namespace."""
    keep = set(cgroups.dirs.values())
    if cfg.get("pidns_fd") is not None:
        keep.add(cfg["pidns_fd"])
    return keep


def slot_main(cfg: dict, cgroups, z_in: int, z_out: int) -> None:
    """A slot's loop: one job at a time from the zygote, until the zygote closes the link."""
    _jail.prctl(_jail.PR_SET_PDEATHSIG, signal.SIGKILL)
    _jail.set_name("sbx-slot")
    slot = _Slot(cfg, cgroups, z_in, z_out)
    # After the forker is forked, so programs do not inherit it: answers, outputs and test code are bounded by
    # per-job budgets, and this bounds whatever they did not foresee.
    mem = cfg["supervisor_memory_mb"] << 20
    _jail.set_rlimits({"RLIMIT_AS": mem, "RLIMIT_DATA": mem})
    reader = wire.TrustedReader()
    while not slot.zygote_gone:
        data = os.read(z_in, 1 << 16)
        if not data:
            return
        for job in reader.feed(data):
            Supervisor(job, cfg, slot).run()


def template_main(cfg: dict, cgroups, ctl_fd: int) -> None:
    """Fork a slot for each request on ctl; send back its job pipe, its frame pipe and a pidfd (SCM_RIGHTS)."""
    _jail.prctl(_jail.PR_SET_PDEATHSIG, signal.SIGKILL)
    _jail.set_name("sbx-template")
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps our slots
    ctl = socket.socket(fileno=ctl_fd)
    while ctl.recv(16):
        job_r, job_w = os.pipe()
        out_r, out_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 70
            try:
                os.setsid()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                _jail.close_except({2, job_r, out_w, *_inherited(cfg, cgroups)})
                slot_main(cfg, cgroups, job_r, out_w)
                code = 0
            finally:
                os._exit(code)
        fds = [job_w, out_r]
        with contextlib.suppress(ProcessLookupError):  # if it died at once, the zygote sees its pipe close
            fds.append(os.pidfd_open(pid))
        socket.send_fds(ctl, [b"slot"], fds)
        for fd in (job_r, out_w, *fds):
            os.close(fd)


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
