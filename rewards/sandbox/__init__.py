"""Sandbox for untrusted (model-written) programs, and verdicts the programs cannot forge.

Python programs run in the runner's own interpreter; C++, Java, JavaScript, Rust and Go programs
(`languages.py`) are compiled by their toolchain and executed, both inside the same layers as a Python program. The
compile step is a job of its own (its own time, memory and process budget, outside the program's time; failures are
compile_error), and its output is cached by a hash of everything that went in (`compile_cache.py`).

How it runs a program (each layer is detected at start-up and named in one log line; `Sandbox.layers` has them):
    - never in the caller's process: a zygote (system Python, `-I -S -B`, scrubbed environment, its own session)
      keeps persistent slots, forked from a template made before any job; each slot's supervisor has a forker
      that forks each program (process tree in `_slot.py`);
    - namespaces: the zygote has private mount/network/IPC/UTS namespaces and a minimal read-only root
      (bind mounts of /usr, /lib*, /bin, /sbin, /etc and five /dev nodes; no /home, /root, /tmp, /work);
      each program is PID 1 of its own PID namespace (killing it kills its whole tree) and has its own mount
      namespace with a fresh /proc and a private, size-capped tmpfs at /tmp as working directory;
    - cgroups per program (memory incl. the whole tree, pids, one CPU of quota), reused only once their memory is
      uncharged (up to the kernel's per-CPU charge batches), else reclaimed or replaced;
    - hard rlimits (address space, CPU time, file size, open files, no core dumps);
    - runs as uid/gid 65534 with no capabilities, no_new_privs, not dumpable, parent-death signal;
    - a seccomp filter: no sockets, ptrace, mount, namespaces, keyrings, bpf, io_uring, kernel modules, SysV IPC
      or POSIX message queues;
    - stdin closed (or the test's input), stdout/stderr captured up to a cap, answers up to a byte budget,
      wall-clock deadline.
Without root (rootless mode, where unprivileged user namespaces exist) the same layers run inside a user namespace
in which the caller is uid 65534: the zygote is PID 1 of its own PID namespace, programs drop every capability;
cgroups are used where delegated, otherwise each program gets a user namespace of its own in which RLIMIT_NPROC
counts its processes alone. Running without the strong layers (namespaces, read-only root, cgroups or their
rootless stand-in, uid drop, seccomp) needs `Sandbox(allow_weak=True)` and logs a loud warning.

How verdicts are decided: only by the trusted side, from what it observes (exit status, signals, cgroup events,
deadlines, its own comparisons). The program's process also holds the model's code, so everything on its result
channel is the program's word: it may return plain answers (JSON with tagged tuples/sets/..., strict types,
`wire.py`) to the call that is open, once, and the callable names it defined; it may report a load failure only as
syntax_error, runtime_error or memory, and a setup error only before the model's code started. Anything else (a
forged or malformed frame, an answer to a call never made) kills it with `protocol_violation` (`_protocol.py`).
A compiled program and its harness share one process, so the program can do anything the harness can (exit early
with 0, print a marker, read the harness's input): a function-call test's harness holds the inputs alone
(`rewards.harness`) and writes one record per call, which counts as that call's answer and nothing more; stdio
output is compared by the supervisor; the exit status can only fail a program. Answers are validated (types, finite
numbers, depth/size caps) and compared by the supervisor without hashing or calling anything the program sent
(`_compare.py`); assert-style test code runs in the supervisor (outside the
program's namespaces, uid and memory) with Python's builtins and its own names, and only the names the spec
declares are proxies of the program (`_tester.py`). Expected outputs, test code and reference solutions never
enter the sandbox; exit codes and printed text are never verdicts. Failures are categorised (CATEGORIES);
`sandbox_error` means our fault and is counted and surfaced, never scored as the model's failure; nothing a
program sends can make it (or another program's verdict) a sandbox_error, or fail the batch.

What it protects against: verdict forgery (early exits, always-equal objects, printed markers, monkeypatched test
frameworks, frame walking, threads, frames written through the runner's own functions or raw writes to inherited
descriptors, claimed setup/load errors), malformed data meant to break the trusted side (unhashable or missing
fields, deep nesting, huge or non-finite numbers, categories outside CATEGORIES), programs reading each other
(SysV shared memory and message queues, files, the memory of earlier jobs in reused processes), programs replacing
builtins or the test's own names, and exceptions that steer the test's control flow (StopIteration in map(),
AttributeError in getattr()), resource exhaustion of the program (loops, sleeps, fork and memory bombs, output
floods, disk filling), of its compiler (template explosions, includes of endless files: the compile job's own
time, memory and output budget) and of the trusted processes (answer floods, hash-collision sets, a request pipe the
program stops reading; all bounded by per-job budgets, non-blocking writes and a memory limit on supervisors), crashes,
writes/deletes outside its tmpfs, reading the caller's environment or home directory, network access, signalling
or killing the harness and other processes.

What it does not protect against: kernel vulnerabilities (it shares the host kernel; seccomp only narrows the
surface; compilers and language runtimes run on untrusted source inside the same layers, and a compiler bug is one
more way in to those layers, not out of them), side channels and timing, reading world-readable system files (/etc,
/usr), CPU contention between concurrent programs beyond the per-program CPU quota (a program that spins slows the
others; one near its time limit can then time out), and wrong tests (a test that catches `Exception` around the
candidate, or one whose helper from the prompt the program redefines, as HumanEval/32 calls the program's `poly`). In
rootless mode without cgroups, memory is limited per process (address space), not per program tree, and the trusted
processes share the caller's uid (separated from programs by namespaces, capabilities and seccomp, not by uid).
Programs run on the interpreter's standard library only (no site-packages), and so does assert-style test code;
compiled programs see their language's standard library only (no packages, crates or modules beyond it). A JVM gets
one syscall Python programs do not (`socketpair`, for its file channels; an anonymous pair that reaches nothing).
Assert-style tests can pass only plain data to `candidate` (no callables or objects; such tests are reported as
sandbox_error) and cannot observe in-place mutation of arguments.
"""

from rewards.sandbox.evaluate import Evaluator
from rewards.sandbox.jobs import Job, Limits, Run
from rewards.sandbox.pool import Sandbox, SandboxUnavailable
from rewards.sandbox.verdict import CATEGORIES, Outcome

__all__ = ["CATEGORIES", "Evaluator", "Job", "Limits", "Outcome", "Run", "Sandbox", "SandboxUnavailable"]
