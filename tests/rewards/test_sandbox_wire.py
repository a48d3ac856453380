"""The verdict path's pure parts: validation and canonical form of untrusted trees, comparison, the program's
protocol, the parent's reading of runner frames."""

import math
import random
import time

import pytest

from rewards.sandbox import Job, Limits, Run, wire
from rewards.sandbox._compare import answer_equal
from rewards.sandbox._protocol import ProgramChannel, Violation
from rewards.sandbox._tester import CandidateError, _categorise, candidate_error
from rewards.sandbox.jobs import apply_frame

P = 2**61 - 1  # ints that are multiples of it all hash to 0

# (tree, valid)
TREES = [
    ([1, "a", None, True, 1.5, {"k": [2]}], True),  # plain JSON
    ({"__tuple__": [1, {"__set__": [2, 3]}]}, True),  # tags
    ({"__dict__": [[{"__tuple__": [1]}, "x"]]}, True),  # non-string key
    ({"__bytes__": "00Ff"}, True),  # hex, either case
    ({"__float__": "-inf"}, True),  # tagged non-finite float
    ({"__complex__": [1.0, {"__float__": "nan"}]}, True),  # complex
    ({"__int__": "-" + "f" * wire.MAX_INT_HEX}, True),  # the longest int
    ({"__unserialisable__": "Weird"}, True),  # a value with no plain form
    (math.nan, False),  # NaN outside a tag (json.loads accepts the literal)
    ([1, math.inf], False),  # 1e999 parses to inf
    ({"__float__": "1.5"}, False),  # only nan/inf/-inf
    ({"__bytes__": " 61"}, False),  # whitespace that bytes.fromhex would accept
    ({"__bytes__": "abc"}, False),  # odd number of digits
    ({"__int__": "zz"}, False),  # not hex
    ({"__int__": "1" * (wire.MAX_INT_HEX + 1)}, False),  # too long
    ({"__complex__": [1, 2]}, False),  # ints in a complex
    ({"__dict__": [[1]]}, False),  # not a pair
    ({"__set__": 3}, False),  # body not a list
    ({"__unserialisable__": ["x"]}, False),  # not a name
    ([[[[0]]]] * 0 + [[]] * 3, True),  # small nesting
]


@pytest.mark.parametrize("tree,valid", TREES)
def test_check_tree(tree, valid):
    if valid:
        assert wire.check_tree(tree, 1000) >= 1
    else:
        with pytest.raises(wire.Malformed):
            wire.check_tree(tree, 1000)


def test_check_tree_caps_depth_and_size_without_recursion():
    deep = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(wire.Malformed, match="deeper"):
        wire.check_tree(deep, 10**6)
    with pytest.raises(wire.Malformed, match="more than 100 values"):
        wire.check_tree(list(range(200)), 100)
    value = (1, [2, {3: "x"}])
    for _ in range(wire.MAX_DEPTH - 3):
        value = [value]
    wire.check_tree(wire.encode(value), 10**6)  # whatever the encoder writes is valid


# (a, b, equal canonical strings)
CANON = [
    (1, {"__int__": "1"}, True),  # one int, two spellings
    (0.0, -0.0, True),  # equal floats
    ({"__float__": "nan"}, {"__float__": "nan"}, True),  # NaN is NaN
    ({"__set__": [1, 2, 3]}, {"__set__": [3, 1, 2]}, True),  # sets in any order
    ({"a": 1}, {"__dict__": [["a", 1]]}, True),  # plain object and tagged dict
    (1, 1.0, False),  # int is not float
    (1, True, False),  # int is not bool
    ("a", {"__bytes__": "61"}, False),  # str is not bytes
    ({"__tuple__": [1]}, [1], False),  # tuple is not list
    ({"__set__": [1]}, {"__frozenset__": [1]}, False),  # set is not frozenset
    ("ab", ["a", "b"], False),  # no ambiguity between strings and lists
    ({"__tuple__": ["a,b"]}, {"__tuple__": ["a", "b"]}, False),  # lengths delimit strings
]


@pytest.mark.parametrize("a,b,same", CANON)
def test_canonical(a, b, same):
    assert (wire.canonical(a) == wire.canonical(b)) is same


def _reference_equal(got, exp) -> bool:
    """The comparison rules written out on Python values with Python's own set/dict semantics (slow, obvious)."""
    if type(exp) is float:
        if type(got) not in (int, float):
            return False
        got = float(got)
        if math.isnan(exp) or math.isnan(got):
            return math.isnan(exp) and math.isnan(got)
        return math.isclose(got, exp, rel_tol=1e-6, abs_tol=1e-9)
    if type(got) is not type(exp):
        return False
    if type(exp) in (list, tuple):
        return len(got) == len(exp) and all(_reference_equal(g, e) for g, e in zip(got, exp, strict=True))
    if type(exp) in (set, frozenset):
        return {_tagged(x) for x in got} == {_tagged(x) for x in exp}
    if type(exp) is dict:
        gk = {_tagged(k): v for k, v in got.items()}
        return len(got) == len(exp) and all(_tagged(k) in gk and _reference_equal(gk[_tagged(k)], v)
                                            for k, v in exp.items())
    return got == exp


def _tagged(v):
    if type(v) in (tuple, frozenset):
        return type(v).__name__, type(v)(_tagged(x) for x in v)
    if type(v) is float:
        return "float", "nan" if math.isnan(v) else v + 0.0
    return type(v).__name__, v


def _random_value(rng: random.Random, depth: int = 0):
    kinds = ["int", "float", "str", "bool", "none"] + (["list", "tuple", "set", "dict"] if depth < 3 else [])
    kind = rng.choice(kinds)
    if kind == "int":
        return rng.choice([0, 1, -1, 7, 2**70, P])
    if kind == "float":
        return rng.choice([0.0, -0.0, 0.1 + 0.2, 0.3, 1.0, 1e300, math.nan, math.inf])
    if kind == "str":
        return rng.choice(["", "a", "b", "1"])
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "none":
        return None
    items = [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if kind == "list":
        return items
    if kind == "tuple":
        return tuple(items)
    hashable = [_random_value(rng, 3) for _ in range(rng.randint(0, 3))]
    return set(hashable) if kind == "set" else {k: rng.choice(items or [0]) for k in hashable}


def _mutate(rng: random.Random, v):
    t = type(v)
    if t is list and v:
        i = rng.randrange(len(v))
        return v[:i] + [_mutate(rng, v[i])] + v[i + 1:]
    if t is tuple and v:
        return tuple(_mutate(rng, list(v)))
    if t is dict and v:
        k = rng.choice(list(v))
        return {**v, k: _mutate(rng, v[k])}
    return rng.choice([_random_value(rng, 3), v, 1, 1.0, True, (v,)])


def test_answer_equal_agrees_with_the_reference_on_random_values():
    rng = random.Random(0)
    agree = 0
    for _ in range(3000):
        a = _random_value(rng)
        b = a if rng.random() < 0.3 else _mutate(rng, a)
        want = _reference_equal(b, a)
        assert answer_equal(wire.encode(b), wire.encode(a)) is want, (b, a)
        agree += want
    assert 300 < agree < 2700  # both outcomes were exercised


def test_answer_equal_never_hashes_or_overflows():
    colliding = {"__set__": [i * P for i in range(1, 80_001)]}
    t0 = time.perf_counter()
    assert not answer_equal(colliding, wire.encode({1, 2}))
    assert not answer_equal(colliding, {"__set__": [i * P for i in range(2, 80_002)]})
    assert answer_equal(colliding, {"__set__": [i * P for i in range(80_000, 0, -1)]})
    assert time.perf_counter() - t0 < 5  # building a set of these takes minutes
    assert not answer_equal(10**400, 0.75)  # an int too large for a float just differs
    assert answer_equal(3, 3.0) and not answer_equal(3.0, 3)


def test_guarded_decode_refuses_colliding_containers_only():
    t0 = time.perf_counter()
    with pytest.raises(wire.Malformed, match="share one hash value"):
        wire.decode([i * P for i in range(1, 80_001)], guard=True)
    with pytest.raises(wire.Malformed):
        wire.decode({"__dict__": [[i * P, 0] for i in range(1, 1000)]}, guard=True)
    assert time.perf_counter() - t0 < 5
    assert wire.decode([0] * 10_000, guard=True) == [0] * 10_000  # equal elements share a hash harmlessly
    assert wire.decode({"__set__": [i * P for i in range(1, 60)]}, guard=True) == {i * P for i in range(1, 60)}
    assert len(wire.decode(list(range(100_000)), guard=True)) == 100_000


ANSWER = {"t": "result", "seq": 0, "ok": 3}
# (mode, frames, the call opened before the last frame or None, what the last frame means or the violation)
PROTOCOL = [
    ("call", [{"t": "setup_error", "detail": "x"}], None, "setup_error"),  # before armed: ours, trusted
    ("call", [{"t": "armed"}, {"t": "setup_error"}], None, Violation),  # after armed: the program's word
    ("call", [{"t": "armed"}, {"t": "load_error", "category": "syntax_error"}], None, "load_error"),
    ("call", [{"t": "armed"}, {"t": "load_error", "category": "passed"}], None, Violation),  # not a failure
    ("call", [{"t": "armed"}, {"t": "load_error", "category": "sandbox_error"}], None, Violation),
    ("call", [{"t": "armed"}, {"t": "load_error", "category": ["x"]}], None, Violation),  # unhashable
    ("call", [{"t": "armed"}, {"t": "loaded", "names": ["add"]}, ANSWER], 0, "answer"),  # the open call
    ("call", [{"t": "armed"}, {"t": "loaded", "names": ["add"]}, ANSWER], None, Violation),  # none open
    ("call", [{"t": "armed"}, {"t": "loaded", "names": ["add"]}, {**ANSWER, "seq": 1}], 0, Violation),
    ("call", [{"t": "armed"}, {"t": "loaded", "names": ["add"]}, {**ANSWER, "seq": [0]}], 0, Violation),
    ("call", [{"t": "armed"}, {"t": "loaded", "names": ["add"]}, {"t": "result", "ok": 3}], 0, Violation),
    ("call", [{"t": "armed"}, {"t": "loaded", "names": ["add"]}, {**ANSWER, "ok": math.nan}], 0, Violation),
    ("call", [{"t": "armed"}, {"t": "loaded", "names": ["add"]}, {**ANSWER, "extra": 1}], 0, Violation),
    ("call", [{"t": "armed"}, {"t": "loaded", "names": ["add"]},
              {"t": "result", "seq": 0, "exc": "ValueError", "detail": "x"}], 0, "answer"),
    ("call", [{"t": "armed"}, {"t": "loaded", "names": ["add"]},
              {"t": "result", "seq": 0, "exc": ["ValueError"]}], 0, Violation),
    ("call", [{"t": "armed"}, {"t": "loaded", "names": 5}], None, Violation),
    ("call", [{"t": "armed"}, {"t": "loaded", "names": ["a b"]}], None, Violation),
    ("call", [{"t": "armed"}, {"t": "loaded", "names": ["add"]}, {"t": "loaded", "names": ["add"]}], None, Violation),
    ("stdio", [{"t": "armed"}, {"t": "done"}, {"t": "done"}], None, "done"),  # a forked child finishing too
    ("call", [{"t": "armed"}, {"t": "done"}], None, Violation),
    ("call", [{"t": "armed"}, [1, 2]], None, Violation),  # not an object
    ("call", [{"t": "loaded", "names": ["add"]}], None, Violation),  # before armed, not ours
]


@pytest.mark.parametrize("mode,frames,open_seq,meaning", PROTOCOL)
def test_program_protocol(mode, frames, open_seq, meaning):
    channel = ProgramChannel(mode)
    for frame in frames[:-1]:
        channel.accept(frame)
    channel.open_seq = open_seq if open_seq is not None else channel.open_seq
    if meaning is Violation:
        with pytest.raises(Violation):
            channel.accept(frames[-1])
    else:
        assert channel.accept(frames[-1])[0] == meaning


def test_an_answer_closes_its_call():
    channel = ProgramChannel("call")
    for frame in ({"t": "armed"}, {"t": "loaded", "names": ["add"]}):
        channel.accept(frame)
    channel.open_seq = 0
    assert channel.accept(ANSWER) == ("answer", 0, {"ok": 3})
    with pytest.raises(Violation):
        channel.accept(ANSWER)  # one answer per call


CALL_JOB = Job(code="", mode="call", entry_point="f", calls=[(0, [1]), (1, [2])], expected=[1, 2])
RAW_JOB = Job(code="", mode="call", entry_point="f", calls=[(0, [1])])
END = {"t": "end", "category": "ok", "detail": "", "tests": ["passed", "wrong_answer"], "names": ["f"]}
# (job, frame, accepted)
FRAMES = [
    (CALL_JOB, END, True),
    (CALL_JOB, {**END, "category": "passed"}, False),  # "passed" is a test's category, not a run's
    (CALL_JOB, {**END, "category": ["ok"]}, False),  # unhashable
    (CALL_JOB, {**END, "tests": ["passed"]}, False),  # one test short
    (CALL_JOB, {**END, "tests": ["passed", "excellent"]}, False),  # not a category
    (CALL_JOB, {**END, "names": [1]}, False),
    (CALL_JOB, {"t": "result", "seq": 0, "ok": 1}, False),  # the supervisor judges this job's answers
    (RAW_JOB, {"t": "result", "seq": 0, "ok": 1}, True),
    (RAW_JOB, {"t": "result", "seq": 5, "ok": 1}, False),  # a call never made
    (RAW_JOB, {"t": "result", "seq": 0, "ok": math.inf}, False),
    (RAW_JOB, {"t": "what"}, False),
]


@pytest.mark.parametrize("job,frame,accepted", FRAMES)
def test_parent_reads_runner_frames_strictly(job, frame, accepted):
    run = Run()
    if accepted:
        apply_frame(frame, job, run)
        assert run.category in ("ok", "sandbox_error") and (run.tests is None or len(run.tests) == job.num_tests)
    else:
        with pytest.raises(ValueError):
            apply_frame(frame, job, run)


def test_limits_are_validated():
    with pytest.raises(ValueError, match="answer_bytes"):
        Limits(answer_bytes=1 << 40)
    with pytest.raises(ValueError, match="positive"):
        Limits(timeout=0)
    with pytest.raises(ValueError, match="one each"):
        Job(code="", mode="call", calls=[(0, [])], expected=[1, 2])


# (exception the program raised, is it still that builtin type for the test)
CANDIDATE_ERRORS = [
    ("ValueError", True),  # a test's `except ValueError` still works
    ("ZeroDivisionError", True),
    ("StopIteration", False),  # would end the test's map()/next() early
    ("AttributeError", False),  # would make getattr() fall back to its default
    ("IndexError", False),  # would end old-style iteration
    ("GeneratorExit", False),
    ("KeyboardInterrupt", False),
    ("AssertionError", False),  # would look like the test's own failure
    ("MyOwnError", False),
]


@pytest.mark.parametrize("name,kept", CANDIDATE_ERRORS)
def test_candidate_exceptions_cannot_steer_the_test(name, kept):
    import builtins

    exc = candidate_error(name, "detail")
    assert isinstance(exc, CandidateError) and isinstance(exc, Exception)
    assert isinstance(exc, getattr(builtins, name, ())) is kept
    assert _categorise(exc)[0] == "runtime_error"
    assert _categorise(candidate_error("MemoryError", ""))[0] == "memory"
