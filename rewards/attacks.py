"""Run an attack file against the sandbox with damage probes around it.

    python -m rewards.attacks FILE.json [--timeout 3]

FILE.json is a list of {"id", "category", "code", "what_it_attacks", "expected_outcome"} entries that all
answer the problem `add(a, b)` (format of shared/sandbox-attacks/attacks.json). Every case is scored with
both a call/expected spec and a HumanEval-style assert spec. Around each case: a victim folder
/tmp/sbx_victim/keep.txt, FAKE_SECRET_TOKEN in this process's environment, ~/fake_secret.txt, a TCP
listener on 127.0.0.1:47123, and checks for leftover processes, cgroups and temporary directories and
that the harness still answers. Prints one line per case, then one JSON summary line; exit 0 only if
every verdict is right and nothing was damaged.
"""

import argparse
import json
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from rewards import spec as specs
from rewards.sandbox import Limits
from rewards.sandbox.evaluate import Evaluator

SECRET = "sk-FAKE-0123456789"
FILE_SECRET = "sk-FAKE-FILE-9876543210"
VICTIM = Path("/tmp/sbx_victim")
PORT = 47123
CALL_SPEC = specs.CallSpec("add", (specs.CallCase([1, 2], 3), specs.CallCase([-1, 1], 0)))
ASSERT_SPEC = specs.AssertSpec(
    "add", code="def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-1, 1) == 0\n")
CANONICAL = "def add(a, b):\n    return a + b\n"


@dataclass
class CaseReport:
    id: str
    expected: str
    verdicts: dict
    """spec kind -> outcome category."""
    correct: bool
    damage: list = field(default_factory=list)
    harness_failure: str = ""


def expected_reward(text: str) -> str:
    """'0', '1' or 'any' from an expected_outcome sentence."""
    t = text.lower()
    if "0 or 1" in t:
        return "any"
    return "1" if t.startswith("reward 1") else "0"


class Probes:
    """The damage probes: set up once, checked after every case."""

    def __init__(self):
        self.home_secret = Path(os.path.expanduser("~/fake_secret.txt"))
        self.created_secret = not self.home_secret.exists()
        if self.created_secret:
            self.home_secret.write_text(FILE_SECRET + "\n")
        self.file_secret = self.home_secret.read_text().strip()
        os.environ["FAKE_SECRET_TOKEN"] = SECRET
        VICTIM.mkdir(exist_ok=True)
        (VICTIM / "keep.txt").write_text("keep me\n")
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", PORT))
        self.listener.settimeout(0.2)
        self.stop = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()
        self.tmp_before = set(os.listdir("/tmp"))

    def _accept(self) -> None:
        while not self.stop:
            try:
                conn, _ = self.listener.accept()
                self.connections += 1
                conn.close()
            except OSError:
                continue

    def damage(self, outputs: str, cgroup_paths: dict, baseline_pids: set) -> list[str]:
        found = []
        victim = sorted(os.listdir(VICTIM))
        if victim != ["keep.txt"] or (VICTIM / "keep.txt").read_text() != "keep me\n":
            found.append(f"victim folder changed: {victim}")
        if self.connections:
            found.append(f"{self.connections} connection(s) reached the loopback listener")
        if SECRET in outputs or self.file_secret in outputs:
            found.append("a secret reached the program's output")
        if not self.thread.is_alive():
            found.append("listener thread died")
        new_tmp = {n for n in set(os.listdir("/tmp")) - self.tmp_before if n.startswith("rlwork")}
        if new_tmp:
            found.append(f"temporary directories left behind: {sorted(new_tmp)}")
        left = _wait_until(lambda: _sandbox_pids(baseline_pids), 3.0)
        if left:
            found.append(f"processes left alive: {sorted(left)}")
        cgs = _wait_until(lambda: _busy_cgroups(cgroup_paths), 3.0)
        if cgs:
            found.append(f"processes left in cgroups: {cgs}")
        return found

    def reset(self) -> None:
        for p in VICTIM.iterdir():
            if p.name != "keep.txt":
                p.unlink()
        (VICTIM / "keep.txt").write_text("keep me\n")
        self.connections = 0

    def close(self) -> None:
        self.stop = True
        self.thread.join()
        self.listener.close()
        os.environ.pop("FAKE_SECRET_TOKEN", None)
        if self.created_secret:
            self.home_secret.unlink()


def _wait_until(probe, patience: float):
    end = time.monotonic() + patience
    while True:
        found = probe()
        if not found or time.monotonic() > end:
            return found
        time.sleep(0.05)


def _busy_cgroups(cgroup_paths: dict) -> list[str]:
    """Job cgroups (kept for reuse while the sandbox lives) that still hold a process."""
    return [str(p) for base in cgroup_paths.values() for p in Path(base).glob("j*")
            if (p / "cgroup.procs").exists() and (p / "cgroup.procs").read_text().strip()]


def _sandbox_pids(baseline: set) -> set:
    """Processes running as the sandbox uid (nobody) that were not there before the run."""
    pids = set()
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.stat(f"/proc/{d}").st_uid == 65534 and int(d) not in baseline:
                    pids.add(int(d))
            except OSError:
                continue
    return pids


def run_cases(cases: list[dict], timeout: float = 3.0, evaluator: Evaluator | None = None) -> list[CaseReport]:
    own = evaluator is None
    ev = evaluator or Evaluator(limits=Limits(timeout=timeout))
    probes = Probes()
    reports = []
    try:
        ev.sandbox.start()
        pid_ns = "namespaces" in ev.sandbox.active_layers
        baseline = _sandbox_pids(set())
        for case in cases:
            reports.append(_run_case(ev, probes, case, pid_ns, baseline))
            probes.reset()
    finally:
        probes.close()
        if own:
            ev.close()
    return reports


def _run_case(ev: Evaluator, probes: Probes, case: dict, pid_ns: bool, baseline: set) -> CaseReport:
    want = expected_reward(case.get("expected_outcome", ""))
    report = CaseReport(id=case["id"], expected=want, verdicts={}, correct=False)
    if case["id"] == "kill_all_processes" and not pid_ns:
        report.harness_failure = "skipped: no PID namespace, running it would attack this machine"
        return report
    try:
        outcomes = ev.evaluate([case["code"], case["code"]], [CALL_SPEC, ASSERT_SPEC])
        alive = ev.evaluate([CANONICAL], [ASSERT_SPEC])[0]
    except Exception as exc:  # the harness itself broke: that is what this tool is for
        report.harness_failure = f"{type(exc).__name__}: {exc}"
        return report
    report.verdicts = {"call": outcomes[0].category, "assert": outcomes[1].category}
    outputs = "".join(o.stdout + o.stderr + o.detail for o in outcomes)
    report.damage = probes.damage(outputs, ev.sandbox.cgroup_paths, baseline)
    if alive.category != "passed":
        report.harness_failure = f"harness unresponsive after the case: canonical solution got {alive.category}"
    if any(o.sandbox_error for o in outcomes):
        report.harness_failure = "sandbox_error: " + "; ".join(o.detail for o in outcomes if o.sandbox_error)
    passed = [o.category == "passed" for o in outcomes]
    report.correct = {"any": True, "0": not any(passed), "1": all(passed)}[want] and not report.harness_failure
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("file", help="attack file (JSON list, format of shared/sandbox-attacks/attacks.json)")
    ap.add_argument("--timeout", type=float, default=3.0, help="per-program wall-clock limit in seconds")
    args = ap.parse_args(argv)
    cases = json.loads(Path(args.file).read_text())
    reports = run_cases(cases, timeout=args.timeout)
    for r in reports:
        status = "OK  " if r.correct and not r.damage else "FAIL"
        extra = "; ".join(r.damage + ([r.harness_failure] if r.harness_failure else []))
        print(f"{status} {r.id:<42} expect reward {r.expected:<3} got {r.verdicts} {extra}".rstrip(), flush=True)
    summary = {"cases": len(reports), "correct_verdicts": sum(r.correct for r in reports),
               "host_damage": sum(bool(r.damage) for r in reports),
               "harness_failures": sum(bool(r.harness_failure) for r in reports)}
    print(json.dumps(summary))
    ok = summary["correct_verdicts"] == summary["cases"] and not summary["host_damage"]
    return 0 if ok and not summary["harness_failures"] else 1


if __name__ == "__main__":
    sys.exit(main())
