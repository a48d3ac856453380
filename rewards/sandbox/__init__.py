"""Sandbox for untrusted (model-written) Python programs, and verdicts the programs cannot forge.

How it runs a program (each layer is detected at start-up; `Sandbox.layers` says which are active):
    - never in the caller's process: a pre-forked zygote (system Python, `-I -S -B`, scrubbed environment,
      its own session) keeps persistent slots; each slot's supervisor has a forker that forks each program
      (see `_supervisor.py`);
    - namespaces: the zygote has private mount/network/IPC/UTS namespaces and a minimal read-only root
      (bind mounts of /usr, /lib*, /bin, /sbin, /etc and five /dev nodes; no /home, /root, /tmp, /work);
      each program is PID 1 of its own PID namespace (killing it kills its whole tree) and has its own mount
      namespace with a fresh /proc and a private, size-capped tmpfs at /tmp as working directory;
    - cgroups per program (memory incl. the whole tree, pids, one CPU of quota), removed afterwards;
    - hard rlimits (address space, CPU time, file size, open files, no core dumps);
    - runs as uid/gid 65534 with no capabilities, no_new_privs, not dumpable, parent-death signal;
    - a seccomp filter: no sockets, ptrace, mount, namespaces, keyrings, bpf, io_uring, kernel modules;
    - stdin closed (or the test's input), stdout/stderr captured up to a cap, wall-clock deadline.
Running without the strong layers (namespaces, read-only root, cgroups, uid drop, seccomp) needs
`Sandbox(allow_weak=True)` and logs a loud warning.

How verdicts are decided: the program only ever returns plain data (JSON with tagged tuples/sets/...,
strict types, see `wire.py`). Call/expected and stdin/stdout tests are compared in the trusted parent;
assert-style test code runs in the program's trusted supervisor (outside its namespaces, uid and memory),
whose `candidate` forwards each call to the program; the test code reaches the supervisor over a per-job
channel only after the program was forked, from a forker that never sees test code. Expected outputs, test
code and reference solutions never enter the sandbox; exit codes and
printed text are never verdicts. Failures are categorised (wrong_answer, runtime_error, syntax_error,
timeout, memory, output_limit); `sandbox_error` means our fault and is counted and surfaced, never
scored as the model's failure.

What it protects against: verdict forgery (early exits, always-equal objects, printed markers,
monkeypatched test frameworks, frame walking, threads), resource exhaustion (loops, sleeps, fork and
memory bombs, output floods, disk filling), crashes, writes/deletes outside its tmpfs, reading the
caller's environment or home directory, network access, signalling or killing the harness and other
processes.

What it does not protect against: kernel vulnerabilities (it shares the host kernel; seccomp only narrows
the surface), side channels and timing, reading world-readable system files (/etc, /usr), CPU contention
between concurrent programs beyond the per-program CPU quota, and wrong tests. Programs run on the
interpreter's standard library only (no site-packages), and so does assert-style test code. Assert-style
tests can pass only plain data to `candidate` (no callables or objects; such tests are reported as
sandbox_error) and cannot observe in-place mutation of arguments.
"""

from rewards.sandbox.evaluate import Evaluator
from rewards.sandbox.jobs import Job, Limits, Run
from rewards.sandbox.pool import Sandbox, SandboxUnavailable
from rewards.sandbox.verdict import CATEGORIES, Outcome

__all__ = ["CATEGORIES", "Evaluator", "Job", "Limits", "Outcome", "Run", "Sandbox", "SandboxUnavailable"]
