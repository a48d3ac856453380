import math
import os

import pytest

from rewards import spec
from rewards.sandbox import Job, Sandbox, SandboxUnavailable, wire
from rewards.sandbox.verdict import normalise_stdout, values_equal

ADD_CALL = spec.CallSpec("add", (spec.CallCase([1, 2], 3), spec.CallCase([-1, 1], 0)))
ADD_ASSERT = spec.AssertSpec("add", code="def check(candidate):\n    assert candidate(1, 2) == 3\n"
                                        "    assert candidate(-1, 1) == 0\n")
ADD_ASSERTS = spec.AssertSpec("add", asserts=("assert add(1, 2) == 3", "assert add(-1, 1) == 0"))
ECHO = spec.StdioSpec((spec.StdioCase("1 2\n", "3\n"), spec.StdioCase("5 5\n", "10\n")))
OK = "def add(a, b):\n    return a + b\n"

# (program, spec, expected passed, expected category)
EVAL_CASES = [
    (OK, ADD_CALL, 2, "passed"),  # correct, call/expected
    (OK, ADD_ASSERT, 1, "passed"),  # correct, check(candidate)
    (OK, ADD_ASSERTS, 2, "passed"),  # correct, MBPP asserts
    ("def add(a, b):\n    return 3\n", ADD_CALL, 1, "wrong_answer"),  # half right: partial credit
    ("def add(a, b):\n    return 3\n", ADD_ASSERTS, 1, "wrong_answer"),  # half right, per-assert credit
    ("def add(a, b):\n    return 3\n", ADD_ASSERT, 0, "wrong_answer"),  # check() is one test
    ("def add(a, b)\n    return a + b\n", ADD_CALL, 0, "syntax_error"),  # syntax error
    ("def add(a, b):\n    return a / 0\n", ADD_CALL, 0, "runtime_error"),  # raises in candidate
    ("def add(a, b):\n    return a / 0\n", ADD_ASSERT, 0, "runtime_error"),  # raises, assert style
    ("def plus(a, b):\n    return a + b\n", ADD_CALL, 0, "runtime_error"),  # entry point missing
    ("def add(a, b):\n    return float(a + b)\n", ADD_CALL, 0, "wrong_answer"),  # float is not int (strict)
    ("def add(a, b):\n    return [a + b]\n", ADD_CALL, 0, "wrong_answer"),  # list is not int
    ("def add(a, b):\n    while True:\n        pass\n", ADD_CALL, 0, "timeout"),  # loop is a timeout
    ("def add(a, b):\n    return 'x' * (1 << 34)\n", ADD_CALL, 0, "memory"),  # MemoryError in candidate
    ("a, b = map(int, input().split())\nprint(a + b)\n", ECHO, 2, "passed"),  # stdio correct
    ("a, b = map(int, input().split())\nprint(a + b, '  ')\n\n", ECHO, 2, "passed"),  # trailing whitespace ok
    ("a, b = map(int, input().split())\nprint(a * b)\n", ECHO, 0, "wrong_answer"),  # stdio wrong
    ("import sys\na, b = map(int, input().split())\nprint(a + b)\nsys.exit(3)\n", ECHO, 0, "runtime_error"),  # exit 3
    ("import sys\na, b = map(int, input().split())\nprint(a + b)\nsys.exit(0)\n", ECHO, 2, "passed"),  # clean exit
    ("print(3)\n", ECHO, 1, "wrong_answer"),  # stdin ignored: one case right by luck
]


def test_all_strong_layers_are_active_here(evaluator):
    evaluator.sandbox.start()
    missing = {k: v for k, v in evaluator.sandbox.layers.items() if v is not None}
    assert not missing, missing


@pytest.mark.parametrize("program,test_spec,passed,category", EVAL_CASES)
def test_evaluate_table(evaluator, program, test_spec, passed, category):
    [out] = evaluator.evaluate([program], [test_spec])
    assert (out.passed, out.category) == (passed, category), out


def test_batch_mixes_kinds_and_keeps_order(evaluator):
    programs = [OK, "def add(a, b):\n    return 0\n", "a, b = map(int, input().split())\nprint(a + b)\n"] * 5
    tests = [ADD_CALL, ADD_ASSERT, ECHO] * 5
    outs = evaluator.evaluate(programs, tests)
    assert [o.category for o in outs] == ["passed", "wrong_answer", "passed"] * 5


def test_program_sees_scrubbed_environment_and_private_root(evaluator):
    probe = ("import os\ndef f():\n    return [os.getuid(), os.getpid(), sorted(os.listdir('/')), dict(os.environ),"
             " os.getcwd(), os.path.exists('/root'), os.path.exists('/work')]\n")
    os.environ["RLWORK_TEST_SECRET"] = "s3cret"
    try:
        with Sandbox() as sb:
            [run] = sb.run([Job(code=probe, mode="call", entry_point="f", calls=[(0, [])])])
    finally:
        del os.environ["RLWORK_TEST_SECRET"]
    uid, pid, root, env, cwd, has_root, has_work = wire.decode(run.results[0]["ok"])
    assert uid == 65534 and pid == 1 and cwd == "/tmp"
    assert not has_root and not has_work and "tmp" in root
    assert "RLWORK_TEST_SECRET" not in env and set(env) <= {"PATH", "HOME", "LANG", "TMPDIR"}


def test_batch_leaves_no_cgroups_or_processes():
    with Sandbox() as sb:
        sb.run([Job(code=OK, mode="call", entry_point="add", calls=[(0, [1, 2])]) for _ in range(20)])
        paths = dict(sb.cgroup_paths)
        assert paths
    assert not any(os.path.exists(p) for p in paths.values())


def test_sandbox_error_is_reported_not_scored():
    with Sandbox() as sb:
        sb.start()
        sb.proc.kill()  # the runner dies under us
        sb.proc.wait()
        [run] = sb.run([Job(code=OK, mode="call", entry_point="add", calls=[(0, [1, 2])])], batch_timeout=5)
        assert run.category == "sandbox_error"
        assert sb.stats["sandbox_errors"] == 1
        [run] = sb.run([Job(code=OK, mode="call", entry_point="add", calls=[(0, [1, 2])])])  # restarted
        assert run.category == "ok" and run.results[0] == {"ok": 3}


def test_refuses_weak_isolation_without_opt_in(caplog):
    with pytest.raises(SandboxUnavailable, match="allow_weak=True"):
        Sandbox(disable=("namespaces",)).start()
    with Sandbox(disable=("namespaces",), allow_weak=True) as sb:
        [run] = sb.run([Job(code=OK, mode="call", entry_point="add", calls=[(0, [1, 2])])])
        assert run.results[0] == {"ok": 3} and sb.layers["namespaces"] is not None
    assert "WITHOUT STRONG ISOLATION" in caplog.text
    assert not [n for n in os.listdir("/tmp") if n.startswith("rlwork-sbx-")]  # its workdir was removed


# (got, expected, equal)
EQUAL_CASES = [
    (3, 3, True),  # ints
    (True, 1, False),  # bool is not int
    (1, True, False),  # int is not bool
    (3, 3.0, True),  # int result for a float expected value
    (3.0, 3, False),  # float result for an int expected value
    (0.1 + 0.2, 0.3, True),  # float tolerance
    (0.31, 0.3, False),  # beyond tolerance
    (math.nan, math.nan, True),  # NaN matches NaN
    ((1, 2), [1, 2], False),  # tuple is not list
    ([1, (2, 3.0000000001)], [1, (2, 3.0)], True),  # nested tolerance
    ({1, 2}, {2, 1}, True),  # sets ignore order
    ({True}, {1}, False),  # set elements are type-strict
    ({"a": [1]}, {"a": [1]}, True),  # dicts
    ({"a": 1, "b": 2}, {"a": 1}, False),  # extra key
    (wire.Unserialisable("Weird"), 3, False),  # unserialisable result equals nothing
    ("3", 3, False),  # str is not int
    (10**400, 0.75, False),  # an int too large for a float differs from a float (no OverflowError)
    ({0.0}, {-0.0}, True),  # set elements compare as values
    ({1: "a"}, {1.0: "a"}, False),  # dict keys are type-strict
]


@pytest.mark.parametrize("got,expected,equal", EQUAL_CASES)
def test_values_equal(got, expected, equal):
    assert values_equal(got, expected) is equal


# Values that must survive the wire unchanged, with their exact types.
ROUND_TRIP = [None, True, 0, -7, 10**5000, 1.5, math.inf, "é", [1, [2]], (1, (2,)), {1, 2}, frozenset({3}),
              {1: "a", (2, 3): [4]}, b"\x00\xff", 1 + 2j]


@pytest.mark.parametrize("value", ROUND_TRIP, ids=lambda v: type(v).__name__)
def test_wire_round_trip(value):
    back = wire.decode(wire.loads(wire.dumps(wire.encode(value))))
    assert back == value and type(back) is type(value)


def test_wire_rejects_subclasses_of_plain_types():
    class Sneaky(int):
        def __eq__(self, other):
            return True

    assert wire.encode(Sneaky(1)) == {"__unserialisable__": "Sneaky"}


@pytest.mark.parametrize("got,expected,match", [
    ("3\n", "3", True),  # trailing newline
    ("3   \n\n\n", "3\n", True),  # trailing spaces and empty lines
    ("1\n 2\n", "1\n2\n", False),  # leading whitespace counts
    ("1\r\n2\r\n", "1\n2\n", True),  # CRLF
])
def test_stdout_normalisation(got, expected, match):
    assert (normalise_stdout(got) == normalise_stdout(expected)) is match


HOSTILE = [  # one per family, fast ones (the timeout families are covered in test_attacks.py)
    "import os\ndef add(a, b):\n    return 0\nos._exit(0)\n",  # verdict forgery by exit
    "class E:\n    def __eq__(self, o):\n        return True\ndef add(a, b):\n    return E()\n",  # always-equal
    "import os\ntry:\n    import posix\n    while True:\n        posix.fork()\nexcept OSError:\n    pass\n"
    "def add(a, b):\n    return 0\n",  # fork bomb hitting the pids limit
    "_h = []\nwhile True:\n    _h.append(bytearray(256 << 20))\n",  # memory bomb
    "import ctypes\nctypes.string_at(0)\n",  # segfault
    "import signal, posix\nposix.kill(-1, signal.SIGKILL)\ndef add(a, b):\n    return 0\n",  # kill everything
]


def test_load_with_hostile_tenth_stays_whole(evaluator):
    """Reduced-size version of `bench/sandbox.py --load`: verdicts stay right batch after batch, nothing leaks."""
    from rewards.attacks import busy_cgroups, leftover_processes

    evaluator.sandbox.start()
    tmp_before = {n for n in os.listdir("/tmp") if n.startswith("rlwork")}
    for batch in range(3):
        programs = [HOSTILE[(batch * 2 + i // 10) % len(HOSTILE)] if i % 10 == 9 else OK for i in range(40)]
        outs = evaluator.evaluate(programs, [ADD_ASSERT] * len(programs))
        assert [o.category == "passed" for o in outs] == [p == OK for p in programs], batch
    assert not leftover_processes(evaluator.sandbox.runner_pid)
    assert not busy_cgroups(evaluator.sandbox.cgroup_paths)
    assert {n for n in os.listdir("/tmp") if n.startswith("rlwork")} == tmp_before


# The marker below, shifted by one byte value, so that no program source holds the marker itself.
_MARKER_SHIFTED = "tcy.uftu.tfdsfu.8g4b"  # shift("sbx-test-secret-7f3a")
MEMORY_SCAN = f'''
import ctypes


def probe():
    """How often the marker occurs in this process's anonymous memory (seen through a +1 byte shift)."""
    shift = bytes(range(1, 256)) + bytes([0])
    needle = "{_MARKER_SHIFTED}".encode()
    with open("/proc/self/maps") as maps:
        regions = [line.split() for line in maps]
    found = 0
    for r in regions:
        lo, hi = (int(x, 16) for x in r[0].split("-"))
        if r[1].startswith("r") and (len(r) < 6 or r[5] in ("[heap]", "[stack]")) and hi - lo < 1 << 28:
            found += ctypes.string_at(lo, hi - lo).translate(shift).count(needle)
    return found
'''
PROBE_TEST = spec.AssertSpec("probe", code="def check(candidate):\n    marker = 'sbx-test-secret-7f3a'\n"
                                           "    assert candidate() == 0, marker\n")


def test_test_code_never_enters_the_program_memory(evaluator):
    # Twelve runs, so that slots are reused after they ran this test code; the last program carries the marker in
    # its own source, which shows the scan would see it.
    programs = [MEMORY_SCAN] * 12 + [MEMORY_SCAN + "# sbx-test-secret-7f3a\n"]
    outcomes = evaluator.evaluate(programs, [PROBE_TEST] * 13)
    assert [o.category for o in outcomes] == ["passed"] * 12 + ["wrong_answer"], [o.detail for o in outcomes]


def test_a_base_cgroup_left_by_a_killed_runner_with_our_pid_is_reclaimed():
    from rewards.sandbox._cgroups import Cgroups

    stale = Cgroups(want=True)  # stands for a runner killed before cleanup, whose PID this process now has
    if stale.error:
        pytest.skip(f"no cgroups here: {stale.error}")
    stale.acquire(64 << 20, 16)  # it had handed out a job cgroup too
    fresh = Cgroups(want=True)  # same PID, same base name: used to fail with EEXIST
    try:
        assert fresh.error is None, fresh.error
        assert fresh.paths == stale.paths
        for path in fresh.paths.values():
            assert not [e for e in os.scandir(path) if e.is_dir()], path  # the stale job cgroup is gone
    finally:
        fresh.remove_all(1.0)
        for path in fresh.paths.values():
            os.rmdir(path)
