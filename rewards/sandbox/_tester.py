"""Assert-style tests, run by the trusted supervisor against the sandboxed program it has just forked.

The dataset's test code reaches the supervisor over the job's own channel only after the program was
forked, so it never exists in the program's memory, and the zygote never reads it. Each name the program
defined becomes a proxy here: calling it sends the (plain-data) arguments to the program and returns its
(plain-data) answer, so `assert candidate(1, 2) == 3` compares two plain values in this process: an object
with a forged `__eq__` never crosses, and nothing the program does can reach the verdict.
"""

import builtins

from rewards.sandbox import wire


class ProgramGone(BaseException):
    """The sandboxed program ended (timeout, crash, ...) while the test still needed it."""


class Unsupported(BaseException):
    """The test passed something that is not plain data (a lambda, an object): our limit, not the model's."""


class HarnessFailure(BaseException):
    """Our own machinery failed while forwarding a call: sandbox_error, never the model's failure."""


class CandidateRaised(Exception):
    """The program raised a non-builtin exception type while answering a call."""


def proxy(name: str, call):
    """A stand-in for the program's `name`; call(name, encoded args) -> {"ok": tree} | {"exc": ..., "detail": ...}
    or raises ProgramGone."""

    def candidate(*args, **kwargs):
        if kwargs:
            raise Unsupported("keyword arguments are not forwarded to the sandboxed program")
        try:
            tree = wire.encode(list(args), strict=True)
        except wire.NotPlain:
            if _from_program_unserialisable(args):  # the program's own earlier answer was not plain data
                raise TypeError(f"argument of {name}() is a non-plain value the program returned earlier") from None
            raise Unsupported(f"argument of {name}() is not plain data: {[type(a).__name__ for a in args]}") from None
        msg = call(name, tree)
        if "exc" in msg:
            cls = getattr(builtins, msg["exc"], None)
            ok = isinstance(cls, type) and issubclass(cls, Exception) and msg["exc"] != "AssertionError"
            exc = cls(msg.get("detail", "")) if ok else CandidateRaised(f"{msg['exc']}: {msg.get('detail')}")
            exc.sbx_from_candidate = True
            raise exc
        return wire.decode(msg["ok"])

    candidate.__name__ = candidate.__qualname__ = name
    return candidate


def run_tests(spec: dict, names: list, call, gone) -> dict:
    """Run one test spec ({entry_point, setup, code | asserts, total}); gone() -> (category, detail) once the
    program has ended, else None. Returns the verdict {"tests": [category per test], "detail": str}."""
    ns = {"__name__": "__sbx_test__", "__builtins__": builtins}
    results, detail = [], ""
    try:
        exec(compile(spec.get("setup") or "", "<setup>", "exec"), ns)
        for name in names:
            ns[name] = proxy(name, call)
        if spec.get("code") is not None:
            exec(compile(spec["code"], "<test>", "exec"), ns)
            statements = [None]
        else:
            statements = spec["asserts"]
    except BaseException as exc:
        return {"tests": ["sandbox_error"] * spec["total"],
                "detail": f"test setup failed: {type(exc).__name__}: {exc}"[:500]}
    for stmt in statements:
        if gone() is not None:
            results.append(gone()[0])
            continue
        try:
            if stmt is None:
                ns["check"](ns[spec["entry_point"]])
            else:
                exec(compile(stmt, "<assert>", "exec"), ns)
            results.append("passed")
        except BaseException as exc:
            cat, why = _categorise(exc)
            results.append(cat)
            detail = detail or why
    return {"tests": results, "detail": detail[:500]}


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
    if isinstance(exc, Unsupported | HarnessFailure):
        return "sandbox_error", why
    if getattr(exc, "sbx_from_candidate", False):
        return "runtime_error", why
    if isinstance(exc, NameError):
        return "runtime_error", why  # the test uses a name the program did not define
    return "wrong_answer", why


def sys_streams(out, err=None) -> tuple:
    """Point sys.stdout/sys.stderr at out/err (err defaults to out); returns the previous pair."""
    import sys
    saved = (sys.stdout, sys.stderr)
    sys.stdout, sys.stderr = out, out if err is None else err
    return saved
