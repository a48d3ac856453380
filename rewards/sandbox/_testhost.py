"""Test host: runs the dataset's trusted assert-style test code outside the sandbox (stdlib only).

Each name the program defined becomes a proxy here: calling it sends the (plain-data) arguments to the
sandboxed program and returns its (plain-data) answer. So `assert candidate(1, 2) == 3` compares two
plain values in this process: an object with a forged `__eq__` never crosses, and nothing the
program does can reach the verdict. Loaded by source from `evaluate.py`, talks frames on stdin/stdout.
"""

import builtins
import os
import queue
import sys
import threading

from rewards.sandbox import wire


class ProgramGone(BaseException):
    """The sandboxed program ended (timeout, crash, ...) while the test still needed it."""


class Unsupported(BaseException):
    """The test passed something that is not plain data (a lambda, an object): our limit, not the model's."""


class CandidateRaised(Exception):
    """The program raised a non-builtin exception type while answering a call."""


_OUT_LOCK = threading.Lock()
_OUT = sys.stdout.buffer


def _emit(obj: dict) -> None:
    data = wire.frame(obj)
    with _OUT_LOCK:
        _OUT.write(data)
        _OUT.flush()


class TestJob:
    def __init__(self, msg: dict):
        self.msg = msg
        self.id = msg["id"]
        self.inbox = queue.Queue()
        self.seq = 0
        self.gone = None

    def proxy(self, name: str):
        def candidate(*args, **kwargs):
            if kwargs:
                raise Unsupported("keyword arguments are not forwarded to the sandboxed program")
            if self.gone is not None:
                raise ProgramGone(*self.gone)
            if _from_program_unserialisable(args):  # the program's own earlier answer was not plain data
                raise TypeError(f"argument of {name}() is a non-plain value the program returned earlier")
            tree = wire.encode(list(args))
            if '"__unserialisable__"' in wire.dumps(tree).decode():
                raise Unsupported(f"argument of {name}() is not plain data: {[type(a).__name__ for a in args]}")
            self.seq += 1
            _emit({"t": "call", "id": self.id, "seq": self.seq, "name": name, "args": tree})
            msg = self.inbox.get()
            if msg["op"] == "gone":
                self.gone = (msg["category"], msg.get("detail", ""))
                raise ProgramGone(*self.gone)
            if "exc" in msg:
                cls = getattr(builtins, msg["exc"], None)
                ok = isinstance(cls, type) and issubclass(cls, Exception) and msg["exc"] != "AssertionError"
                exc = cls(msg.get("detail", "")) if ok else CandidateRaised(f"{msg['exc']}: {msg.get('detail')}")
                exc.sbx_from_candidate = True
                raise exc
            return wire.decode(msg["ok"])

        candidate.__name__ = candidate.__qualname__ = name
        return candidate

    def run(self) -> None:
        m = self.msg
        ns = {"__name__": "__sbx_test__", "__builtins__": builtins}
        results, detail = [], ""
        try:
            exec(compile(m.get("setup") or "", "<setup>", "exec"), ns)
            for name in m["names"]:
                ns[name] = self.proxy(name)
            if m.get("code") is not None:
                exec(compile(m["code"], "<test>", "exec"), ns)
                statements = [None]
            else:
                statements = m["asserts"]
        except BaseException as exc:
            _emit({"t": "verdict", "id": self.id, "tests": ["sandbox_error"] * m["total"],
                   "detail": f"test setup failed: {type(exc).__name__}: {exc}"[:500]})
            return
        for stmt in statements:
            if self.gone is not None:
                results.append(self.gone[0])
                continue
            try:
                if stmt is None:
                    ns["check"](ns[m["entry_point"]])
                else:
                    exec(compile(stmt, "<assert>", "exec"), ns)
                results.append("passed")
            except BaseException as exc:
                cat, why = _categorise(exc)
                results.append(cat)
                detail = detail or why
        _emit({"t": "verdict", "id": self.id, "tests": results, "detail": detail[:500]})


def _from_program_unserialisable(value, depth: int = 0) -> bool:
    if isinstance(value, wire.Unserialisable):
        return True
    if depth < 50 and type(value) in (list, tuple, set, frozenset):
        return any(_from_program_unserialisable(v, depth + 1) for v in value)
    if depth < 50 and type(value) is dict:
        return any(_from_program_unserialisable(v, depth + 1) for v in value.values())
    return False


def _categorise(exc: BaseException) -> tuple[str, str]:
    why = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, ProgramGone):
        return exc.args[0], str(exc.args[1])
    if isinstance(exc, Unsupported):
        return "sandbox_error", why
    if getattr(exc, "sbx_from_candidate", False):
        return "runtime_error", why
    if isinstance(exc, NameError):
        return "runtime_error", why  # the test uses a name the program did not define
    return "wrong_answer", why


def main() -> None:
    jobs = {}
    reader = wire.FrameReader()
    while True:
        data = os.read(0, 1 << 20)
        if not data:
            return
        for msg in reader.feed(data):
            op = msg["op"]
            if op == "start":
                job = jobs[msg["id"]] = TestJob(msg)
                threading.Thread(target=job.run, daemon=True).start()
            elif op in ("result", "gone") and msg["id"] in jobs:
                jobs[msg["id"]].inbox.put(msg)
            elif op == "drop":
                jobs.pop(msg["id"], None)
            elif op == "shutdown":
                return
