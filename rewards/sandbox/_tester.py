"""Assert-style tests, run by the trusted supervisor against the sandboxed program it has just forked.

The dataset's test code reaches the supervisor with the job; the program is forked from a forker that never
saw it, so it never exists in the program's memory. The test namespace is the test's own: its setup and test
code run with Python's builtins, and only the names the spec declares (the entry point, and names the test code
uses without defining them, e.g. a helper from the prompt) become proxies of the program. Calling a proxy sends
the (plain-data) arguments to the program and returns its (plain-data) answer, so `assert candidate(1, 2) == 3`
compares two plain values in this process: an object with a forged `__eq__` never crosses, a program's `abs`
or `isclose` never replaces the test's, and nothing the program does can reach the verdict.

An exception the program raised reaches the test as a CandidateError: a subclass of the builtin type for
ordinary errors (ValueError, TypeError, ... so `except ValueError` in a test still works), never one that Python
or the builtins treat as a signal (StopIteration ends map()/next(), AttributeError makes getattr() fall back,
IndexError ends old-style iteration, ...). If it escapes a test statement, that test is a runtime_error.
"""

import builtins

from rewards.sandbox import wire


class ProgramGone(BaseException):
    """The sandboxed program ended (timeout, crash, ...) while the test still needed it."""


class Unsupported(BaseException):
    """The test passed something that is not plain data (a lambda, an object): our limit, not the model's."""


class HarnessFailure(BaseException):
    """Our own machinery failed while forwarding a call: sandbox_error, never the model's failure."""


class CandidateError(Exception):
    """An exception the program raised while answering a call; .type_name is its type's name."""

    type_name = "Exception"


# Builtin exception types that no builtin or protocol catches on its own: a test only sees them if it asks.
_PLAIN_ERRORS = ("ArithmeticError", "FloatingPointError", "OverflowError", "ZeroDivisionError", "ValueError",
                 "TypeError", "KeyError", "RuntimeError", "RecursionError", "NotImplementedError")
_ERROR_TYPES = {name: type(name, (CandidateError, getattr(builtins, name)), {"type_name": name})
                for name in _PLAIN_ERRORS}


def candidate_error(type_name: str, detail: str) -> CandidateError:
    """The exception a test sees; other types' classes are made per call (a cache keyed by names the program
    chooses would grow in this long-lived process)."""
    cls = _ERROR_TYPES.get(type_name) or type(type_name, (CandidateError,), {"type_name": type_name})
    return cls(detail)


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
            raise candidate_error(msg["exc"], msg.get("detail", ""))
        try:
            with wire.gc_paused():
                return wire.decode(msg["ok"], guard=True)
        except ValueError as exc:  # e.g. elements chosen to share one hash value: equal to nothing
            return wire.Unserialisable(f"refused answer ({exc})")

    candidate.__name__ = candidate.__qualname__ = name
    return candidate


def run_tests(spec: dict, names: list, call, gone) -> dict:
    """Run one test spec ({entry_point, setup, code | asserts, total, names}) against the program, whose loaded
    callables are `names`; gone() -> (category, detail) once the program has ended, else None.
    Returns the verdict {"tests": [category per test], "detail": str}."""
    ns = {"__name__": "__sbx_test__", "__builtins__": builtins}
    results, detail = [], ""
    if spec["entry_point"] not in names:
        return {"tests": ["runtime_error"] * spec["total"],
                "detail": f"the program does not define {spec['entry_point']!r}"}
    try:
        exec(compile(spec.get("setup") or "", "<setup>", "exec"), ns)
        defined = set(names)
        # Declared by the spec, defined by the program, and not a name the setup gave a meaning.
        for name in spec.get("names") or [spec["entry_point"]]:
            if name in defined and (name == spec["entry_point"] or name not in ns):
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
                ns["check"](proxy(spec["entry_point"], call))
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
    if isinstance(exc, CandidateError):
        return ("memory" if exc.type_name == "MemoryError" else "runtime_error"), f"{exc.type_name}: {exc}"
    if isinstance(exc, NameError):
        return "runtime_error", why  # the test uses a name the program did not define
    return "wrong_answer", why


def sys_streams(out, err=None) -> tuple:
    """Point sys.stdout/sys.stderr at out/err (err defaults to out); returns the previous pair."""
    import sys
    saved = (sys.stdout, sys.stderr)
    sys.stdout, sys.stderr = out, out if err is None else err
    return saved
