"""The `tests` column: parse, validate and write test specifications (shared contract with the data side).

A row's `tests` is a JSON string of one of these shapes:

    {"kind": "call",   "entry_point": "add", "cases": [{"args": [1, 2], "expected": 3}, ...]}
    {"kind": "call",   "entry_point": "add", "language": "rust",
     "signature": {"params": ["int", "int"], "returns": "int"}, "cases": [...]}
    {"kind": "stdio",  "cases": [{"stdin": "1 2\\n", "stdout": "3\\n"}, ...]}
    {"kind": "stdio",  "language": "cpp", "match": "tokens", "cases": [...]}
    {"kind": "assert", "entry_point": "add", "code": "def check(candidate):\\n    assert candidate(1, 2) == 3\\n"}
    {"kind": "assert", "entry_point": "add", "asserts": ["assert add(1, 2) == 3"], "setup": "import math"}
    {"kind": "assert", "entry_point": "find_zero", "code": "...", "names": ["poly"]}

Values in `call` cases (args and expected) use the tagged form of `rewards.sandbox.wire`: JSON
lists are lists, `{"__tuple__": [...]}` is a tuple, `{"__set__": [...]}` a set, `{"__dict__": [[k, v], ...]}`
a dict with any keys (a plain JSON object is a dict with string keys), `{"__float__": "nan"}` a
non-finite float. `dumps(...)` writes this form from Python values, so `dumps(CallSpec(...))` round-trips.

Comparison of a `call` result with `expected` (in the trusted parent, on decoded plain data):
types are strict (`True` is not `1`, a tuple is not a list, a str subclass is not a str), except that an
int result matches a float expected value numerically; floats (also inside containers) match within
`rel_tol=1e-6`, `abs_tol=1e-9`, and NaN matches NaN; set elements and dict keys match exactly.
`stdio` output matches when equal after removing trailing whitespace from every line and trailing
empty lines (`"match": "lines"`, the default); `"match"` may also be "exact", "tokens" (whitespace-separated
tokens) or "float" (tokens, numbers within 1e-6 absolute or relative). A `stdio` spec may name its `"language"`
(python, cpp, java, javascript, rust, go; `rewards.sandbox.languages`); without one, the reward takes the row's
`language` column, else the language of the answer's fenced code block, else Python. A `call` spec may name its
`"language"` too; C++, Java, Rust and Go need its `"signature"` (Python annotations, as MultiPL-E translates them;
`rewards.harness`), and its values are checked against it when the spec is read. `assert` tests pass when
the dataset's test code runs to the end without an exception.

In `assert` tests, the names that refer to the program are the entry point and `names`: by default the names the
test code uses without defining them (a helper from the prompt, like HumanEval's `poly`); Python's builtins and
names the setup or test code define always keep their own meaning, whatever the program defines.
"""

import ast
import builtins
import functools
import json
from dataclasses import dataclass, field

from rewards import harness
from rewards.harness.types import Signature
from rewards.sandbox import wire
from rewards.sandbox._compare import MATCHES
from rewards.sandbox.languages import LANGUAGES, canonical_language


@dataclass(frozen=True)
class CallCase:
    args: list
    """Positional arguments, decoded Python values."""
    expected: object


@dataclass(frozen=True)
class CallSpec:
    entry_point: str
    cases: tuple[CallCase, ...]
    kind: str = "call"
    language: str | None = None
    """The program's language; None: the row's, or the answer's fence tag (when `signature` lets it run there),
    or Python."""
    signature: Signature | None = None
    """Parameter and return types as Python annotations; needed to call C++, Java, Rust and Go functions."""


@dataclass(frozen=True)
class StdioCase:
    stdin: str
    stdout: str


@dataclass(frozen=True)
class StdioSpec:
    cases: tuple[StdioCase, ...]
    kind: str = "stdio"
    language: str | None = None
    """The program's language (`rewards.sandbox.languages`); None: the row's, or the answer's fence tag, or Python."""
    match: str = "lines"
    """How output is compared: lines, exact, tokens or float (`rewards.sandbox.verdict.MATCHES`)."""


@dataclass(frozen=True)
class AssertSpec:
    """HumanEval style (`code` defines check(candidate)) or MBPP style (`asserts`, one statement each)."""

    entry_point: str
    code: str | None = None
    asserts: tuple[str, ...] = field(default=())
    setup: str = ""
    names: tuple[str, ...] = ()
    """Other names of the program the test calls; default: those the test code uses without defining them."""
    kind: str = "assert"

    def __post_init__(self):
        for name in self.names:
            if not isinstance(name, str) or not name.isidentifier():
                raise ValueError(f"tests.names: {name!r} is not a Python identifier")
            if hasattr(builtins, name):
                raise ValueError(f"tests.names: {name!r} is a builtin, and the test always gets Python's own; "
                                 "rename the function in the prompt and the test")

    @property
    def num_tests(self) -> int:
        return len(self.asserts) if self.code is None else 1

    @property
    def declared_names(self) -> tuple[str, ...]:
        """The names that become proxies of the program: the entry point first, then `names` or, if none are
        given, the test's free names (used by the setup or test code, defined by neither, not builtins)."""
        return _declared(self.entry_point, self.names, self.setup, self.code, self.asserts)


@functools.lru_cache(maxsize=4096)
def _declared(entry_point: str, names: tuple, setup: str, code: str | None, asserts: tuple) -> tuple[str, ...]:
    free = set(names) if names else _free_names([setup, code or "", *asserts])
    return (entry_point, *sorted(free - {entry_point}))


def _free_names(sources: list[str]) -> set[str]:
    loaded, bound = set(), set()
    for src in sources:
        try:
            tree = ast.parse(src)
        except SyntaxError:  # the test host reports a broken test as such
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Name):
                (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                bound.add(node.name)
            elif isinstance(node, ast.arg):
                bound.add(node.arg)
            elif isinstance(node, ast.alias):
                bound.add(node.asname or node.name.split(".")[0])
            elif isinstance(node, ast.ExceptHandler | ast.MatchAs | ast.MatchStar) and node.name:
                bound.add(node.name)
            elif isinstance(node, ast.MatchMapping) and node.rest:
                bound.add(node.rest)
    return {n for n in loaded - bound if not hasattr(builtins, n)}


TestSpec = CallSpec | StdioSpec | AssertSpec


def parse(tests: str | dict) -> TestSpec:
    """JSON string (or already-parsed dict) -> spec; raises ValueError naming the field and the fix."""
    if isinstance(tests, str):
        try:
            tests = json.loads(tests)
        except json.JSONDecodeError as exc:
            raise ValueError(f"tests: not valid JSON ({exc}); write the column with rewards.spec.dumps") from exc
    if not isinstance(tests, dict):
        raise ValueError(f"tests: expected a JSON object with a 'kind', got {type(tests).__name__}")
    kind = tests.get("kind")
    if kind == "call":
        return _parse_call(tests)
    if kind == "stdio":
        cases = _list(tests, "cases")
        out = []
        for i, c in enumerate(cases):
            _need_str(c, "stdin", f"cases[{i}]")
            _need_str(c, "stdout", f"cases[{i}]")
            out.append(StdioCase(c["stdin"], c["stdout"]))
        match = tests.get("match", "lines")
        if match not in MATCHES:
            raise ValueError(f"tests.match: {match!r} is not one of {MATCHES}")
        return StdioSpec(tuple(out), language=_language(tests), match=match)
    if kind == "assert":
        ep = _entry_point(tests)
        setup = tests.get("setup", "")
        if not isinstance(setup, str):
            raise ValueError("tests.setup: must be a string of Python code (e.g. 'import math')")
        if ("code" in tests) == ("asserts" in tests):
            raise ValueError("tests: an 'assert' spec needs exactly one of 'code' (defines check(candidate)) "
                             "or 'asserts' (list of assert statements)")
        names = tests.get("names", [])
        if not isinstance(names, list):
            raise ValueError("tests.names: must be a list of the program's function names the test calls")
        if "code" in tests:
            _need_str(tests, "code", "tests")
            if "def check" not in tests["code"]:
                raise ValueError("tests.code: must define check(candidate); use 'asserts' for bare statements")
            return AssertSpec(ep, code=tests["code"], setup=setup, names=tuple(names))
        asserts = _list(tests, "asserts")
        if not all(isinstance(a, str) and a.strip() for a in asserts):
            raise ValueError("tests.asserts: every entry must be a non-empty string like 'assert f(1) == 2'")
        return AssertSpec(ep, asserts=tuple(asserts), setup=setup, names=tuple(names))
    raise ValueError(f"tests.kind: {kind!r} is not one of 'call', 'stdio', 'assert'")


def _parse_call(tests: dict) -> CallSpec:
    language = _language(tests)
    ep = tests.get("entry_point")
    if language == "java" and isinstance(ep, str) and "." in ep:  # Class.method
        cls, _, method = ep.rpartition(".")
        if not (cls.isidentifier() and method.isidentifier()):
            raise ValueError(f"tests.entry_point: {ep!r} is not a Java method or Class.method")
    else:
        ep = _entry_point(tests)
    signature = Signature.from_dict(tests["signature"]) if tests.get("signature") is not None else None
    out = []
    for i, c in enumerate(_list(tests, "cases")):
        if not isinstance(c, dict) or "args" not in c or "expected" not in c:
            raise ValueError(f"tests.cases[{i}]: needs 'args' (JSON list) and 'expected'")
        if not isinstance(c["args"], list):
            raise ValueError(f"tests.cases[{i}].args: must be a JSON list of positional arguments, "
                             f"got {type(c['args']).__name__}; wrap a single argument as [x]")
        try:
            out.append(CallCase(wire.decode(c["args"]), wire.decode(c["expected"])))
        except (ValueError, TypeError) as exc:
            msg = f"tests.cases[{i}]: malformed tagged value ({exc}); write it with rewards.spec.dumps"
            raise ValueError(msg) from exc
    if language not in (None, "python"):
        harness.validate(language, ep, signature, out)
    return CallSpec(ep, tuple(out), language=language, signature=signature)


def _language(tests: dict) -> str | None:
    name = tests.get("language")
    if name is None:
        return None
    canon = canonical_language(name)
    if canon is None:
        raise ValueError(f"tests.language: {name!r} is not a language the sandbox runs; use one of "
                         f"python, {', '.join(LANGUAGES)}")
    return canon


def _entry_point(tests: dict) -> str:
    ep = tests.get("entry_point")
    if not isinstance(ep, str) or not ep.isidentifier():
        raise ValueError(f"tests.entry_point: must be a Python identifier naming the function, got {ep!r}")
    return ep


def _list(d: dict, key: str) -> list:
    v = d.get(key)
    if not isinstance(v, list) or not v:
        raise ValueError(f"tests.{key}: must be a non-empty JSON list")
    return v


def _need_str(d, key: str, where: str) -> None:
    if not isinstance(d, dict) or not isinstance(d.get(key), str):
        raise ValueError(f"{where}.{key}: must be a string")


def to_dict(spec: TestSpec) -> dict:
    if isinstance(spec, CallSpec):
        cases = [{"args": wire.encode(list(c.args)), "expected": wire.encode(c.expected)} for c in spec.cases]
        d = {"kind": "call", "entry_point": spec.entry_point, "cases": cases}
        if spec.language is not None:
            d["language"] = spec.language
        if spec.signature is not None:
            d["signature"] = spec.signature.to_dict()
        return d
    if isinstance(spec, StdioSpec):
        d = {"kind": "stdio", "cases": [{"stdin": c.stdin, "stdout": c.stdout} for c in spec.cases]}
        if spec.language is not None:
            d["language"] = spec.language
        if spec.match != "lines":
            d["match"] = spec.match
        return d
    d = {"kind": "assert", "entry_point": spec.entry_point}
    d.update({"code": spec.code} if spec.code is not None else {"asserts": list(spec.asserts)})
    if spec.setup:
        d["setup"] = spec.setup
    if spec.names:
        d["names"] = list(spec.names)
    return d


def dumps(spec: TestSpec) -> str:
    """Spec -> the JSON string for the `tests` column.

    Example:
        >>> dumps(CallSpec("add", (CallCase([1, 2], (3, 0)),)))
        '{"kind": "call", "entry_point": "add", "cases": [{"args": [1, 2], "expected": {"__tuple__": [3, 0]}}]}'
    """
    return json.dumps(to_dict(spec))
