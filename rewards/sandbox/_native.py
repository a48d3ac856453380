"""The program side of languages other than Python: write the job's files, then compile them or execute them.

Runs in the sandboxed program process after it hardened itself (`_program.py`), as our code; loaded into the runner
by source. Nothing here decides a verdict. The commands come with the job from the trusted side
(`rewards.sandbox.languages`), never from the program.

    compile   the sources go to /tmp/src; each step runs as a child of this process (so this process, not the
              compiler, reports the result); the collected outputs of /tmp/out go back in one "compiled" frame;
    exec      the files go to /tmp/app; this process becomes the program (execve). In call mode descriptor 3 stays
              open: the generated harness writes one answer per call on it (`rewards.harness`). In stdio mode it
              is closed first: the program has no way to the result channel.
"""

import base64
import os
import stat

from rewards.sandbox import wire
from rewards.sandbox._jail import close_except, write_all

SRC, OUT, APP = "/tmp/src", "/tmp/out", "/tmp/app"
RESULT_FD = 3


def _safe(name) -> bool:
    return type(name) is str and 0 < len(name) <= 200 and name not in (".", "..") and "/" not in name \
        and name.isprintable()


def write_files(root: str, names: list, blobs: list) -> None:
    """The job's files (names, and their bytes as the job's raw blobs) into root."""
    os.makedirs(root, mode=0o700, exist_ok=True)
    if len(names) != len(blobs):
        raise ValueError(f"{len(names)} file names for {len(blobs)} blobs")
    for name, data in zip(names, blobs, strict=True):
        if not _safe(name):
            raise ValueError(f"file name {name!r}")
        fd = os.open(f"{root}/{name}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o700)
        try:
            write_all(fd, data)
        finally:
            os.close(fd)


def environment(job: dict, base: dict) -> dict:
    env = dict(base)
    env.update({str(k): str(v) for k, v in (job.get("env") or {}).items()})
    return env


def start(job: dict, base_env: dict, fds: dict, private_tmp: bool) -> None:
    """Compile or execute the job (see the module docstring). Never returns. fds: the hardened process's req_r and
    resp_w; before "armed" only our code has run, and a failure to set up is reported as ours (setup_error).
    private_tmp: /tmp is this program's own tmpfs (the namespaces layer); the paths here need it."""
    resp, compiling = fds["resp_w"], job["mode"] == "compile"
    send = lambda obj, fd=resp: write_all(fd, wire.frame(obj))  # noqa: E731
    try:
        if not private_tmp:
            raise OSError("languages other than Python need the namespaces layer (a private /tmp per program)")
        env = environment(job, base_env)
        root = SRC if compiling else APP
        write_files(root, job["files"], job.pop(wire.BLOB_DATA, []))
        if compiling:
            os.makedirs(OUT, mode=0o700, exist_ok=True)
        os.chdir(root)
        first = (job["steps"][0] if compiling else job["argv"])[0]
        if not os.access(first, os.X_OK):
            raise OSError(f"{first} is not an executable this sandbox can see")
        os.close(fds["req_r"])
        for fd in (0, 1, 2):  # dup2 onto the same number keeps a pipe's close-on-exec flag: clear it
            os.set_inheritable(fd, True)
        if job["mode"] == "call":  # the harness answers on descriptor 3
            if resp != RESULT_FD:
                os.dup2(resp, RESULT_FD)  # inheritable, unlike the pipe itself
                os.close(resp)
                resp = RESULT_FD
            os.set_inheritable(RESULT_FD, True)
    except BaseException as exc:
        send({"t": "setup_error", "detail": f"{type(exc).__name__}: {exc}"[:500]})
        os._exit(70)
    send({"t": "armed"}, resp)
    if compiling:
        _compile(job, env, lambda obj: send(obj, resp))
    if job["mode"] != "call":
        os.close(resp)  # stdio: the program has no way to the result channel
    argv = job["argv"]
    try:
        os.execve(argv[0], argv, env)
    finally:
        os._exit(127)  # the supervisor sees the status: the program did not start


def _compile(job: dict, env: dict, send) -> None:
    """Run the compile steps in turn; send {"t": "compiled", "status": [wait status per step run], "files": ...}.
    Never returns."""
    statuses = []
    for argv in job["steps"]:
        pid = os.fork()
        if pid == 0:
            try:
                close_except({0, 1, 2})  # the compiler never holds the result channel
                os.execve(argv[0], argv, env)
            finally:
                os._exit(127)
        _, status = os.waitpid(pid, 0)
        statuses.append(status)
        if status != 0:
            break
    files = {}
    if statuses and all(s == 0 for s in statuses):
        files = _collect(job.get("collect") or [], job["limits"].get("artifact_bytes", 48 << 20))
    send({"t": "compiled", "status": statuses, "files": files})
    os._exit(0)


def _collect(patterns: list, limit: int) -> dict:
    """The outputs named by patterns ("*.class": a suffix); {"__too_large__": ""} if they exceed limit bytes."""
    out, total = {}, 0
    for name in sorted(os.listdir(OUT)):
        if not any(name == p or (p.startswith("*") and name.endswith(p[1:])) for p in patterns):
            continue
        path = f"{OUT}/{name}"
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode) or not _safe(name):
            continue
        total += st.st_size
        if total > limit:
            return {"__too_large__": ""}
        with open(path, "rb") as fh:
            out[name] = base64.b64encode(fh.read()).decode()
    return out
