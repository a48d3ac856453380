"""Isolation between programs and bounds on the trusted processes: slots from a pristine template, cgroups reused
only uncharged, supervisors' memory limit, duplicates run once, the start-up line naming the layers."""

import json
import logging
import os
import signal
import time
from pathlib import Path

import pytest

from rewards import spec
from rewards.attacks import sandbox_processes
from rewards.sandbox import Evaluator, Job, Limits, Sandbox
from rewards.sandbox._cgroups import Cgroups

ADD_CALL = spec.CallSpec("add", (spec.CallCase([1, 2], 3), spec.CallCase([-1, 1], 0)))
OK = "def add(a, b):\n    return a + b\n"

# A program that counts the marker "sbx-respawned-2b6d" in its own anonymous memory (its source holds the marker
# shifted by one byte value only).
SCAN = '''
import ctypes
def probe():
    shift = bytes(range(1, 256)) + bytes([0])
    needle = "tcy.sftqbxofe.3c7e".encode()
    found = 0
    for line in open("/proc/self/maps"):
        r = line.split()
        lo, hi = (int(x, 16) for x in r[0].split("-"))
        if r[1].startswith("r") and (len(r) < 6 or r[5] in ("[heap]", "[stack]")) and hi - lo < 1 << 28:
            found += ctypes.string_at(lo, hi - lo).translate(shift).count(needle)
    return found
'''
PROBE = spec.CallSpec("probe", (spec.CallCase([], 0),))


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def test_respawned_slots_hold_no_earlier_jobs():
    """Slots that die are replaced from the template, made before any job: the zygote's heap, which relayed the
    marker in other programs' code, never becomes a program's memory."""
    with Evaluator(limits=Limits(timeout=5.0), max_concurrency=3) as ev:
        marked = [OK + "# sbx-respawned-2b6d\n" + "#" * i for i in range(12)]  # distinct: not deduplicated
        assert all(o.category == "passed" for o in ev.evaluate(marked, [ADD_CALL] * 12))
        slots = [p for p in sandbox_processes(ev.sandbox.runner_pid) if _comm(p) == "sbx-slot"]
        assert len(slots) == 3
        for pid in slots:
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
        programs = [SCAN + "#" * i for i in range(9)] + [SCAN + "# sbx-respawned-2b6d\n"]  # the last: control
        outcomes = ev.evaluate(programs, [PROBE] * len(programs))
        assert [o.category for o in outcomes] == ["passed"] * 9 + ["wrong_answer"], [o.detail for o in outcomes]
        fresh = [p for p in sandbox_processes(ev.sandbox.runner_pid) if _comm(p) == "sbx-slot"]
        assert len(fresh) == 3 and not set(fresh) & set(slots)


def test_supervisors_have_a_memory_limit():
    with Sandbox(max_concurrency=2, supervisor_memory_mb=700) as sb:
        sb.run([Job(code=OK, mode="call", entry_point="add", calls=[(0, [1, 2])])])  # the slots are up
        slots = [p for p in sandbox_processes(sb.runner_pid) if _comm(p) == "sbx-slot"]
        assert len(slots) == 2
        for pid in slots:
            with open(f"/proc/{pid}/limits") as fh:
                line = next(ln for ln in fh if ln.startswith("Max address space"))
            assert line.split()[3:5] == [str(700 << 20)] * 2, line


def test_a_cgroup_is_reused_only_once_its_memory_is_uncharged(tmp_path):
    cg = Cgroups(want=True)
    if cg.error:
        pytest.skip(f"no cgroups here: {cg.error}")
    try:
        name, _ = cg.acquire(256 << 20, 16)
        pid = os.fork()
        if pid == 0:  # leaves 32 MiB of page cache charged to the cgroup when it exits
            try:
                cg.join(name)
                with open(tmp_path / "cache.bin", "wb") as fh:
                    fh.write(b"x" * (32 << 20))
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        assert cg.charged(name) > 16 << 20
        cg.release(name)
        end = time.monotonic() + 5
        while cg.tick() and time.monotonic() < end:
            time.sleep(0.02)
        for job in cg.free:  # reclaimed, or removed instead of reused
            assert cg.charged(job) <= cg.residue, (job, cg.charged(job))
        assert name in cg.free or not any(os.path.exists(f"{p}/{name}") for p in cg.paths.values())
    finally:
        cg.remove_all(1.0)
        for path in cg.paths.values():
            os.rmdir(path)


def test_cpu_weight_counts_every_concurrent_program():
    with Sandbox(max_concurrency=3) as sb:
        base = sb.cgroup_paths.get("cpu")
        if base is None:
            pytest.skip("no cpu cgroup controller here")
        with open(f"{os.path.dirname(base)}/cpu.shares") as fh:
            parent = int(fh.read())
        with open(f"{base}/cpu.shares") as fh:
            assert int(fh.read()) == 3 * parent


def test_identical_pairs_run_once(evaluator):
    before = evaluator.sandbox.stats["programs"]
    wrong = "def add(a, b):\n    return 0\n"
    outs = evaluator.evaluate([OK, OK, wrong, OK, wrong], [ADD_CALL] * 5)
    assert evaluator.sandbox.stats["programs"] - before == 2
    assert [o.category for o in outs] == ["passed", "passed", "wrong_answer", "passed", "wrong_answer"]
    assert [o.extra.get("duplicate_of") for o in outs] == [None, 0, None, 0, 2]
    outs[1].tests[0] = "changed"
    assert outs[0].tests[0] == "passed"  # copies do not share their lists


def test_start_up_says_which_layers_are_active(caplog):
    with caplog.at_level(logging.INFO, logger="rewards.sandbox"), Sandbox(max_concurrency=2) as sb:
        pass
    lines = [r.getMessage() for r in caplog.records if "sandbox layers active" in r.getMessage()]
    assert len(lines) == 1 and all(layer in lines[0] for layer in sb.active_layers)


ROOTLESS_UID = 54321  # any uid without privileges; it needs no passwd entry
ROOTLESS_CHECK = '''
import json, sys
sys.path.insert(0, sys.argv[1])
from rewards.sandbox import Evaluator, Job, Limits, wire
from rewards.spec import AssertSpec
probe = ("import os\\ndef add(a, b):\\n    st = open('/proc/self/status').read().splitlines()\\n"
         "    return [os.getuid(), os.getpid(), [l.split()[1] for l in st if l.startswith(('CapEff', 'CapBnd'))]]\\n")
with Evaluator(limits=Limits(timeout=3)) as ev:
    [run] = ev.sandbox.run([Job(code=probe, mode="call", entry_point="add", calls=[(0, [1, 2])])])
    check = AssertSpec("add", code="def check(candidate):\\n    assert candidate(1, 2) == 3\\n")
    [out] = ev.evaluate(["def add(a, b):\\n    return a + b\\n"], [check])
    print(json.dumps({"layers": ev.sandbox.layers, "probe": wire.decode(run.results[0]["ok"]), "check": out.category}))
'''


def _rootless(args: list, tmp: str, timeout: float):
    import shutil
    import subprocess

    if os.getuid() != 0:
        pytest.skip("not root: the other tests already run rootless")
    if shutil.which("python3", path="/usr/bin") is None or subprocess.run(
            ["/usr/bin/python3", "-c", "import sys; sys.exit(sys.version_info < (3, 10))"]).returncode:
        pytest.skip("no /usr/bin/python3 >= 3.10 to run as another user (the pyenv one is unreadable to others)")
    env = {"PATH": "/usr/bin:/bin", "HOME": tmp, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.run(["/usr/bin/python3", *args], user=ROOTLESS_UID, group=ROOTLESS_UID, capture_output=True,
                          text=True, timeout=timeout, cwd=tmp, env=env)


@pytest.fixture
def rootless_dir():
    import shutil
    import tempfile

    path = tempfile.mkdtemp(prefix="sbx-rootless-")
    os.chown(path, ROOTLESS_UID, ROOTLESS_UID)
    yield path
    shutil.rmtree(path)


def test_rootless_runs_the_same_layers(rootless_dir):
    """As a user without privileges: a user namespace, uid 65534 there without capabilities, PID 1 of its own
    PID namespace, seccomp; cgroups if delegated, else per-program rlimits; verdicts as with root."""
    proc = _rootless(["-c", ROOTLESS_CHECK, str(Path(__file__).resolve().parents[2])], rootless_dir, 120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    layers = got["layers"]
    assert layers["user_namespace"] is None and layers["namespaces"] is None and layers["seccomp"] is None
    assert layers["uid_drop"] is None and (layers["cgroups"] is None or layers["process_rlimits"] is None)
    assert got["probe"] == [65534, 1, ["0000000000000000", "0000000000000000"]]
    assert got["check"] == "passed"
    assert "sandbox layers active:" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_rootless_attacks(rootless_dir):
    """The shared attack file and the verdict-path attack files, as a user without privileges."""
    repo = Path(__file__).resolve().parents[2]
    shared = repo.parent / "shared" / "sandbox-attacks" / "attacks.json"
    files = [str(f) for f in sorted((repo / "tests" / "rewards" / "attacks").glob("*.json"))]
    files = ([str(shared)] if shared.exists() else []) + files
    proc = _rootless(["-m", "rewards.attacks", *files, "--probe-dir", f"{rootless_dir}/probes"], rootless_dir, 600)
    assert proc.stdout, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 0 and summary["correct_verdicts"] == summary["cases"] >= 40, proc.stdout[-3000:]
