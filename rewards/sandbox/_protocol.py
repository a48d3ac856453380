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


MAX_RECORD = 1 << 20
"""Longest line the supervisor keeps waiting for the end of (a record's budget is also the job's answer budget)."""
_HEADER_BYTES = 4


class NativeChannel:
    """The result channel of a program in another language (`_native.py`), checked by the supervisor.

        before "armed"   (our code only)     "setup_error" or "armed", as length-prefixed frames
        after "armed"    compile mode: one "compiled" frame, from our code in the compiling process (the compiler
                         runs as its child, without the channel); it can only make the program run, never pass;
                         call mode: the program's process (harness and model code alike) writes one line of JSON
                         per call, {"seq": n, "ok": tree} or {"seq": n, "exc": name, "detail": text}, for calls
                         0, 1, ... in order, each once;
                         stdio mode: nothing (the channel is closed before the program starts).

    `feed(data)` returns the events the bytes complete, as `ProgramChannel.accept` does ("armed", "setup_error",
    "answer", "compiled"), or raises Violation (or wire.Malformed for a frame that is not JSON)."""

    def __init__(self, mode: str, calls: int):
        self.mode, self.calls = mode, calls
        self.armed = False
        self.names = None  # no "loaded": the harness is ours, the entry point is in it
        self.load = None
        self.done = True  # a stdio program is judged on its exit status and output alone
        self.open_seq = 0
        self.compiled = None
        self.buf = bytearray()

    def feed(self, data: bytes) -> list:
        self.buf += data
        events = []
        while self.buf:
            if not self.armed or (self.mode == "compile" and self.compiled is None):
                msg = self._frame()
                if msg is None:
                    break
                events.append(self._frame_event(msg))
            elif self.mode == "call":
                end = self.buf.find(b"\n")
                if end < 0:
                    if len(self.buf) > MAX_RECORD:
                        raise Violation("a record line longer than the budget")
                    break
                line = bytes(self.buf[:end])
                del self.buf[:end + 1]
                events.append(self._record(line))
            else:
                raise Violation(f"bytes after its {'compile result' if self.mode == 'compile' else 'start'}")
        return events

    def _frame(self):
        if len(self.buf) < _HEADER_BYTES:
            return None
        n = int.from_bytes(self.buf[:_HEADER_BYTES], "big")
        if n > wire.MAX_FRAME:
            raise Violation(f"a frame of {n} bytes")
        if len(self.buf) < _HEADER_BYTES + n:
            return None
        body = bytes(self.buf[_HEADER_BYTES:_HEADER_BYTES + n])
        del self.buf[:_HEADER_BYTES + n]
        try:
            return wire.loads(body)
        except (ValueError, RecursionError):
            raise Violation("a frame that is not JSON") from None

    def _frame_event(self, msg) -> tuple:
        t = msg.get("t") if type(msg) is dict else None
        if not self.armed:
            if t == "armed":
                self.armed = True
                return ("armed",)
            if t == "setup_error":
                return ("setup_error", clean(msg.get("detail"), 500))
            raise Violation(f"a {clean(t, 20)!r} frame before its setup finished")
        status, files = msg.get("status"), msg.get("files")
        if t != "compiled" or type(status) is not list or not all(type(s) is int for s in status) \
                or type(files) is not dict or not all(type(k) is str and type(v) is str for k, v in files.items()):
            raise Violation("a compile result that is not one")
        self.compiled = {"status": status, "files": files}
        return ("compiled", self.compiled)

    def _record(self, line: bytes) -> tuple:
        try:
            msg = wire.loads(line.decode("utf-8", "replace"))  # a string with invalid UTF-8 equals no expected one
        except (ValueError, RecursionError):
            raise Violation("a record that is not JSON") from None
        if type(msg) is not dict:
            raise Violation("a record that is not a JSON object")
        seq = msg.get("seq")
        if type(seq) is not int or seq != self.open_seq or seq >= self.calls:
            raise Violation(f"a record for call {clean(repr(seq), 20)} (expected call {self.open_seq})")
        if "ok" in msg:
            if len(msg) != 2:
                raise Violation("a record with extra fields")
            try:
                wire.check_tree(msg["ok"], MAX_NODES)
            except wire.Malformed as exc:
                raise Violation(f"a malformed answer ({exc})") from None
            answer = {"ok": msg["ok"]}
        else:
            exc, detail = msg.get("exc"), msg.get("detail", "")
            if not set(msg) <= {"seq", "exc", "detail"} or type(exc) is not str or not exc.isidentifier() \
                    or len(exc) > MAX_NAME or type(detail) is not str:
                raise Violation("a record with neither a plain value nor an exception name")
            answer = {"exc": exc, "detail": clean(detail, 300)}
        self.open_seq = seq + 1
        return ("answer", seq, answer)

    def compile_outcome(self, category: str, detail: str, lim: dict, collects: bool) -> tuple[str, str, dict | None]:
        """A compile job's end, from how its process ended (`category`, `detail`, as the supervisor classified it)
        and the "compiled" frame: ("ok", "", files), or compile_error saying why (sandbox_error stays)."""
        if category == "sandbox_error":
            return category, detail, None
        compiled = self.compiled
        if category != "ok" or compiled is None:
            why = {"timeout": f"compiler timeout: it ran past its {lim['timeout']}s limit",
                   "memory": f"the compiler ran out of its {lim['memory_mb']} MiB",
                   "output_limit": f"the compiler wrote more than {lim['output_bytes']} bytes"}.get(category)
            return "compile_error", why or f"the compiler did not finish ({category}: {detail})", None
        for step, status in enumerate(compiled["status"]):
            if status:
                how = (f"exit status {status >> 8}" if status & 0x7F == 0 else f"signal {status & 0x7F}")
                return "compile_error", f"compile step {step + 1} failed ({how})", None
        files = compiled["files"]
        if "__too_large__" in files:
            return "compile_error", "the compiled program is larger than the artifact budget", None
        if not files and collects:
            return "compile_error", "the compiler produced none of the expected outputs", None
        return "ok", "", files
