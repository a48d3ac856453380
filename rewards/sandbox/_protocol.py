"""What a sandboxed program may say on its result channel, checked by the supervisor (no I/O; loaded by source).

The program's process also holds the model's code, which can write on the channel itself (through the runner's
functions, reached from the call stack or sys.modules, or with raw writes to the inherited descriptor). So the
supervisor takes from the channel only what the program could have answered anyway:

    before "armed"   (our code only: the model's code has not run)    "setup_error" or "armed"
    after "armed"    a load failure (syntax_error, runtime_error or memory) before loading;
                     "loaded" once, with the callable names it defined (call and assert modes);
                     one answer to the call that is open, and only to that call: plain data or an exception name;
                     "done" (stdio mode)

Anything else (an answer to a call not made, a second answer, a category that is not a failure, a setup error
after the model's code started, a malformed frame) is a Violation: the supervisor kills the program and its
tests get `protocol_violation`, a failure. How a run ended is decided by the supervisor from what it observes.
"""

from rewards.sandbox import wire

LOAD_FAILURES = ("syntax_error", "runtime_error", "memory")
"""The only categories a program may report about itself (it failed to load): all failures."""
MAX_NAMES, MAX_NAME = 256, 100
MAX_NODES = 4_000_000
"""Values in one answer (the byte budget usually binds first)."""


class Violation(Exception):
    """The program wrote something on its result channel that it may not; str(exc) says what."""


def clean(text, limit: int) -> str:
    """Untrusted text for a frame or a log: a str, at most limit characters, no lone surrogates."""
    if type(text) is not str:
        return ""
    return text[:limit].encode("utf-8", "replace").decode()


class ProgramChannel:
    """The state of one program's result channel. `accept(msg)` returns what the frame means, as a tuple:

        ("setup_error", detail) | ("armed",) | ("load_error", category, detail) | ("loaded", names)
        | ("answer", seq, {"ok": tree} | {"exc": name, "detail": text}) | ("done",)

    or raises Violation. The supervisor sets `open_seq` when it sends a call; an answer to it closes it."""

    def __init__(self, mode: str):
        self.mode = mode
        self.armed = False
        self.names = None
        self.load = None
        self.done = False
        self.open_seq = None

    def accept(self, msg) -> tuple:
        if type(msg) is not dict:
            raise Violation("a frame that is not a JSON object")
        t = msg.get("t")
        if not self.armed:  # only our code has run in the program so far
            if t == "armed":
                self.armed = True
                return ("armed",)
            if t == "setup_error":
                return ("setup_error", clean(msg.get("detail"), 500))
            raise Violation(f"a {clean(t, 20)!r} frame before its setup finished")
        if t == "result":
            return self._answer(msg)
        if t == "loaded":
            return self._loaded(msg)
        if t == "load_error":
            category = msg.get("category")
            if self.names is not None or self.load is not None or self.done:
                raise Violation("a load error after it had loaded")
            if type(category) is not str or category not in LOAD_FAILURES:
                raise Violation(f"a load error with category {clean(repr(category), 40)} (only {LOAD_FAILURES})")
            self.load = (category, clean(msg.get("detail"), 500))
            return ("load_error", *self.load)
        if t == "done":
            if self.mode != "stdio" or self.load is not None:
                raise Violation("'done' outside stdio mode or after a load error")
            self.done = True  # a forked child that runs to the end says it again: harmless
            return ("done",)
        if t == "setup_error":
            raise Violation("a setup error after its code started")
        raise Violation(f"a frame of type {clean(repr(t), 40)}")

    def _loaded(self, msg: dict) -> tuple:
        names = msg.get("names")
        if self.mode == "stdio" or self.names is not None or self.load is not None:
            raise Violation("an unexpected 'loaded'")
        if type(names) is not list or len(names) > MAX_NAMES or not all(
                type(n) is str and len(n) <= MAX_NAME and n.isidentifier() for n in names):
            raise Violation("a 'loaded' frame whose names are not a list of identifiers")
        self.names = names
        return ("loaded", names)

    def _answer(self, msg: dict) -> tuple:
        seq = msg.get("seq")
        if self.open_seq is None or type(seq) is not int or seq != self.open_seq:
            raise Violation("an answer to a call that is not open")
        if "ok" in msg:
            if len(msg) != 3:
                raise Violation("an answer with extra fields")
            try:
                wire.check_tree(msg["ok"], MAX_NODES)
            except wire.Malformed as exc:
                raise Violation(f"a malformed answer ({exc})") from None
            answer = {"ok": msg["ok"]}
        else:
            exc, detail = msg.get("exc"), msg.get("detail", "")
            if not set(msg) <= {"t", "seq", "exc", "detail"} or type(exc) is not str or not exc.isidentifier() \
                    or len(exc) > MAX_NAME or type(detail) is not str:
                raise Violation("an answer with neither a plain value nor an exception name")
            answer = {"exc": exc, "detail": clean(detail, 300)}
        self.open_seq = None
        return ("answer", seq, answer)
