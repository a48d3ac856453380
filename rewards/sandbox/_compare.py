"""Answers against expected values, on plain-data trees; runs in the trusted supervisor (loaded by source).

Nothing the program sent is hashed, called or converted in a way that can raise: the answer is a tree that
`wire.check_tree` accepted, sets and dict keys are compared through their sorted canonical strings, and an int
too large for a float simply differs from a float. The rules are those of `rewards.spec`: strict types (an int
answer matches a float expected value numerically), floats within REL_TOL/ABS_TOL (also inside containers),
NaN equals NaN, set elements and dict keys exactly.
"""

import math

from rewards.sandbox import wire

REL_TOL, ABS_TOL = 1e-6, 1e-9
_EXACT = {int, str, bool, type(None)}  # JSON scalars compared exactly once their types match one for one


def answer_equal(got, expected) -> bool:
    """got: a validated tree from the program; expected: a tree from the test spec."""
    ek, ev = wire.view(expected)
    gk, gv = wire.view(got)
    if ek == "float":
        if gk == "int":
            try:
                gv = float(gv)
            except OverflowError:
                return False
        elif gk != "float":
            return False
        if math.isnan(ev) or math.isnan(gv):
            return math.isnan(ev) and math.isnan(gv)
        return math.isclose(gv, ev, rel_tol=REL_TOL, abs_tol=ABS_TOL)
    if gk != ek or ek == "unserialisable":
        return False
    if ek in ("list", "tuple", "complex"):
        if len(gv) != len(ev):
            return False
        kinds = list(map(type, ev))
        if kinds == list(map(type, gv)) and _EXACT.issuperset(kinds):  # flat, exact types: compare at C speed
            return gv == ev
        return all(map(answer_equal, gv, ev))
    if ek in ("set", "frozenset"):
        return len(gv) == len(ev) and sorted(map(wire.canonical, gv)) == sorted(map(wire.canonical, ev))
    if ek == "dict":
        if len(gv) != len(ev):
            return False
        gs = sorted(((wire.canonical(k), v) for k, v in gv), key=_first)
        es = sorted(((wire.canonical(k), v) for k, v in ev), key=_first)
        return all(gc == ec and answer_equal(g, e) for (gc, g), (ec, e) in zip(gs, es, strict=True))
    return gv == ev  # none, bool, int, str, bytes (hex)


def _first(pair):
    return pair[0]


MATCHES = ("lines", "exact", "tokens", "float")
"""How a stdio test compares output: lines (the default: trailing whitespace of each line and trailing empty lines
ignored), exact (byte for byte, as text), tokens (the whitespace-separated tokens), float (tokens; two tokens that
both read as finite numbers match within FLOAT_TOL, absolute or relative, as contest checkers accept)."""
FLOAT_TOL = 1e-6


def normalise_stdout(text: str) -> str:
    """Trailing whitespace of each line and trailing empty lines are ignored; everything else counts."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


def stdout_matches(got: str, expected: str, match: str = "lines") -> bool:
    if match == "exact":
        return got == expected
    if match == "lines":
        return normalise_stdout(got) == normalise_stdout(expected)
    got_tokens, want_tokens = got.split(), expected.split()
    if len(got_tokens) != len(want_tokens):
        return False
    if match == "tokens":
        return got_tokens == want_tokens
    return all(g == w or _numbers_close(g, w) for g, w in zip(got_tokens, want_tokens, strict=True))


def _numbers_close(got: str, want: str) -> bool:
    if len(got) > 400 or len(want) > 400:  # float() of a long token is slow, and no checker reads such numbers
        return False
    try:
        g, w = float(got), float(want)
    except ValueError:
        return False
    if not (math.isfinite(g) and math.isfinite(w)):
        return False
    return abs(g - w) <= FLOAT_TOL or abs(g - w) <= FLOAT_TOL * abs(w)
