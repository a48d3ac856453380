"""Function-call tests in other languages: a harness generated in the target language, values translated both ways.

For a call spec in C++, Java, JavaScript, Rust or Go, the program is compiled together with a harness that holds the
*inputs* of each call as target-language literals (MultiPL-E/MBXP conventions: `cpp.py`, `java.py`, ...), calls the
entry point with them in turn and writes each result in the sandbox's plain-data JSON (`rewards.sandbox.wire`), one
line per call, on descriptor 3. The expected values never enter the sandbox: `call_build` translates them into what a
correct function's printed result reads back as (`expected` of each language: a C++ std::tuple is a tuple, a
JavaScript array a list, a float a float), and the supervisor compares each line with them.

The program shares the harness's process and can do anything the harness can (write lines itself, exit early,
replace console.log): whatever it writes on descriptor 3 is only ever taken as its answer to the next call, checked
and compared like the harness's own, and anything else there is a protocol_violation. So the most a program can do
is to answer the calls, which is to solve them.
"""

from __future__ import annotations

from rewards.harness import cpp, go, java, javascript, rust
from rewards.harness.types import Signature, T, check, parse_type
from rewards.sandbox import wire

TARGETS = {m.NAME: m for m in (cpp, java, javascript, rust, go)}
__all__ = ["Signature", "T", "TARGETS", "call_build", "calls_and_expected", "parse_type", "validate"]


def calls_and_expected(language: str, signature: Signature | None, cases) -> tuple[list, list]:
    """([[(value, type) per argument] per call], [expected tree per call]) for `cases` (CallCase-like: .args,
    .expected); ValueError saying what does not fit (arity, a value of another type, a type the target lacks)."""
    target = TARGETS[language]
    if signature is None and target.NEEDS_TYPES:
        raise ValueError(f"tests.signature: {language} call tests need the parameter and return types, as Python "
                         'annotations: {"params": ["List[int]", "int"], "returns": "bool"}')
    calls, expected = [], []
    ret = signature.return_type if signature is not None else T("any")
    if signature is not None and hasattr(target, "type_name"):  # types the target has no form for, named first
        for t in signature.param_types:
            target.type_name(t)
        if ret.kind != "any":
            target.type_name(ret)
    for i, case in enumerate(cases):
        types = signature.param_types if signature is not None else (T("any"),) * len(case.args)
        if len(case.args) != len(types):
            raise ValueError(f"tests.cases[{i}].args: {len(case.args)} arguments for {len(types)} parameters")
        args = [(check(v, t, f"tests.cases[{i}].args[{j}]"), t) for j, (v, t) in enumerate(zip(case.args, types,
                                                                                                 strict=True))]
        for v, t in args:
            target.literal(v, t)  # raises for what the target cannot write
        calls.append(args)
        value = target.expected(check(case.expected, ret, f"tests.cases[{i}].expected"), ret)
        expected.append(wire.encode(value))
    return calls, expected


def validate(language: str, entry_point: str, signature: Signature | None, cases) -> None:
    """Raise ValueError if a call spec cannot run in `language` (see `calls_and_expected`)."""
    if language not in TARGETS:
        return
    if language == "java":
        cls, _, method = entry_point.rpartition(".")
        if not method.isidentifier() or (cls and not cls.isidentifier()):
            raise ValueError(f"tests.entry_point: {entry_point!r} is not a Java method or Class.method")
    calls_and_expected(language, signature, cases)


def call_build(lang, code: str, sp):
    """(build of program + harness, expected trees) for the call spec `sp` in `lang` (a languages.Language)."""
    calls, expected = calls_and_expected(lang.name, sp.signature, sp.cases)
    harness = TARGETS[lang.name].harness(sp.entry_point, calls)
    prelude, harness = harness if isinstance(harness, tuple) else ("", harness)  # C++: headers before the program
    return lang.build(code, harness, prelude=prelude), expected
