"""Run an attack file against the sandbox with damage probes around it.

    python -m rewards.attacks FILE.json [FILE.json ...] [--timeout 3]

A file is a list of {"id", "category", "code", "what_it_attacks", "expected_outcome"} entries that answer
the problem `add(a, b)` (format of shared/sandbox-attacks/attacks.json). By default every case is scored
with a call/expected spec and a HumanEval-style assert spec. Optional fields widen a case:

    "language":   the program's language (python by default; cpp, java, javascript, rust, go: `add(a, b)` on 64-bit
                  integers, in Java a static method of class Problem); such a case is scored with the call spec by
                  default, its "call" and "stdio" specs being those of its language;
    "specs":      which tests to score it with: names from SPECS ("call", "assert", "asserts", "stdio") or
                  whole specs in the `tests` column format (rewards.spec), e.g. one whose test code the attack targets;
    "neighbours": other programs, each {"code", "when": "before" | "with" | "after", "specs"?,
                  "expected_outcome"? (default "reward 1")}, run in a batch before the attack, in its batch
                  (ahead of it) or in a batch after it: their verdicts must be right too (one program must never
                  cost another its verdict, nor read it).

Around each case: a victim folder /tmp/sbx_victim/keep.txt, FAKE_SECRET_TOKEN in this process's environment,
~/fake_secret.txt, a TCP listener on 127.0.0.1:47123; afterwards, checks for leftover sandboxed processes (only
the sandbox's own: descendants of its runner), busy cgroups, temporary directories, the memory of this process and
of the sandbox's trusted processes, the case's wall time, that every category is one of CATEGORIES, and that the
harness still answers. Prints one line per case, then one JSON summary line; exit 0 only if every verdict is right
and nothing was damaged.
"""

import argparse
import dataclasses
import json
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from rewards import spec as specs
from rewards.harness.types import Signature
from rewards.sandbox import CATEGORIES, Limits
from rewards.sandbox.evaluate import Evaluator
from rewards.sandbox.languages import canonical_language

SECRET = "sk-FAKE-0123456789"
FILE_SECRET = "sk-FAKE-FILE-9876543210"
VICTIM = Path("/tmp/sbx_victim")
PORT = 47123
CALL_SPEC = specs.CallSpec("add", (specs.CallCase([1, 2], 3), specs.CallCase([-1, 1], 0)))
ASSERT_SPEC = specs.AssertSpec(
    "add", code="def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-1, 1) == 0\n")
SPECS = {
    "call": CALL_SPEC,
    "assert": ASSERT_SPEC,
    "asserts": specs.AssertSpec("add", asserts=("assert add(1, 2) == 3", "assert add(-1, 1) == 0")),
    "stdio": specs.StdioSpec((specs.StdioCase("1 2\n", "3\n"), specs.StdioCase("-1 1\n", "0\n"))),
}
CANONICAL = "def add(a, b):\n    return a + b\n"
HARNESS_GROWTH_MB = 64
"""Peak memory (VmHWM) this process may gain during one case."""
TRUSTED_PEAK_MB = 160
"""Peak memory any trusted sandbox process (runner, template, supervisors, forkers) may ever reach."""


@dataclass
class CaseReport:
    id: str
    expected: str
    verdicts: dict
    """spec label (or neighbour label) -> outcome category."""
    correct: bool
    damage: list = field(default_factory=list)
    harness_failure: str = ""
    seconds: float = 0.0


def expected_reward(text: str) -> str:
    """'0', '1' or 'any' from an expected_outcome sentence."""
    t = text.lower()
    if "0 or 1" in t:
        return "any"
    return "1" if t.startswith("reward 1") else "0"


class Probes:
    """The damage probes: set up once, checked after every case.

    victim, port, secret_file: where the probes live; the defaults are the shared attack file's. Tests pass a
    tmp dir, a free port and a file in it, and `localise` rewrites attack code to match.
    """

    def __init__(self, victim: Path = VICTIM, port: int = PORT, secret_file: Path | None = None):
        self.victim, self.port = Path(victim), port
        self.secret_file = Path(secret_file or os.path.expanduser("~/fake_secret.txt"))
        self.created_secret = not self.secret_file.exists()
        if self.created_secret:
            self.secret_file.write_text(FILE_SECRET + "\n")
        self.file_secret = self.secret_file.read_text().strip()
        os.environ["FAKE_SECRET_TOKEN"] = SECRET
        self.victim.mkdir(exist_ok=True)
        (self.victim / "keep.txt").write_text("keep me\n")
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", port))
        self.port = self.listener.getsockname()[1]
        self.listener.settimeout(0.2)
        self.stop = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()
        self.tmp_before = set(os.listdir("/tmp"))

    def localise(self, code: str) -> str:
        """Attack code aimed at the default probe locations, aimed at these instead."""
        return code.replace(str(VICTIM), str(self.victim)).replace(str(PORT), str(self.port))

    def _accept(self) -> None:
        while not self.stop:
            try:
                conn, _ = self.listener.accept()
                self.connections += 1
                conn.close()
            except OSError:
                continue

    def damage(self, outputs: str, cgroup_paths: dict, runner_pid: int | None) -> list[str]:
        found = []
        victim = sorted(os.listdir(self.victim))
        if victim != ["keep.txt"] or (self.victim / "keep.txt").read_text() != "keep me\n":
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
        if runner_pid is not None:
            left = _wait_until(lambda: leftover_processes(runner_pid), 3.0)
            if left:
                found.append(f"sandboxed processes left alive: {sorted(left)}")
            heavy = {p: kib >> 10 for p, kib in trusted_peaks(runner_pid).items() if kib >> 10 > TRUSTED_PEAK_MB}
            if heavy:
                found.append(f"trusted sandbox processes peaked above {TRUSTED_PEAK_MB} MiB: {heavy}")
        cgs = _wait_until(lambda: busy_cgroups(cgroup_paths), 3.0)
        if cgs:
            found.append(f"processes left in cgroups: {cgs}")
        return found

    def reset(self) -> None:
        for p in self.victim.iterdir():
            if p.name != "keep.txt":
                p.unlink()
        (self.victim / "keep.txt").write_text("keep me\n")
        self.connections = 0

    def close(self) -> None:
        self.stop = True
        self.thread.join()
        self.listener.close()
        os.environ.pop("FAKE_SECRET_TOKEN", None)
        if self.created_secret:
            self.secret_file.unlink()


def _wait_until(probe, patience: float):
    end = time.monotonic() + patience
    while True:
        found = probe()
        if not found or time.monotonic() > end:
            return found
        time.sleep(0.05)


def busy_cgroups(cgroup_paths: dict) -> list[str]:
    """Job cgroups (kept for reuse while the sandbox lives) that still hold a process."""
    return [str(p) for base in cgroup_paths.values() for p in Path(base).glob("j*")
            if (p / "cgroup.procs").exists() and (p / "cgroup.procs").read_text().strip()]


def _status(pid: int) -> dict:
    try:
        with open(f"/proc/{pid}/status") as fh:
            return dict(line.rstrip("\n").split(":\t", 1) for line in fh if ":\t" in line)
    except OSError:
        return {}


def sandbox_processes(runner_pid: int) -> dict[int, int]:
    """pid -> depth below the sandbox's runner (the zygote, depth 0), for the runner and all its descendants."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            ppid = _status(int(d)).get("PPid")
            if ppid is not None:
                children.setdefault(int(ppid), []).append(int(d))
    found, todo = {}, [(runner_pid, 0)]
    while todo:
        pid, depth = todo.pop()
        if pid in found:
            continue
        found[pid] = depth
        todo += [(c, depth + 1) for c in children.get(pid, [])]
    return found


def _hardened(st: dict) -> bool:
    """A program or a process it started: under the seccomp filter, or running as the sandbox's uid (nobody)."""
    return st.get("Seccomp", "0").strip() != "0" or st.get("Uid", "").split()[:1] == ["65534"]


def leftover_processes(runner_pid: int) -> set[int]:
    """Live hardened processes among the sandbox's own (descendants of its runner), not others' on the machine.
    Trusted processes and idle programs (forked ahead, still waiting for a job) are not hardened yet."""
    return {pid for pid in sandbox_processes(runner_pid)
            if (st := _status(pid)) and _hardened(st) and st.get("State", "Z").split()[0] not in ("Z", "X")}


def trusted_peaks(runner_pid: int) -> dict[int, int]:
    """Peak resident memory (KiB) of the sandbox's persistent trusted processes: runner, template, supervisors,
    forkers (not the programs forked ahead, which live for one job)."""
    out = {}
    for pid in sandbox_processes(runner_pid):
        st = _status(pid)
        if st and not _hardened(st) and "VmHWM" in st and st.get("Name") != "sbx-program":
            out[pid] = int(st["VmHWM"].split()[0])
    return out


def own_peak_kib() -> int:
    return int(_status(os.getpid()).get("VmHWM", "0 kB").split()[0])


ADD_SIGNATURE = Signature(("int", "int"), "int")


def _named_spec(name: str, language: str):
    if language == "python":
        return SPECS[name]
    if name == "call":
        return dataclasses.replace(CALL_SPEC, language=language, signature=ADD_SIGNATURE)
    if name == "stdio":
        return dataclasses.replace(SPECS["stdio"], language=language)
    raise ValueError(f"attack spec {name!r}: a {language} program takes the 'call' or 'stdio' spec")


def case_specs(case: dict) -> list[tuple[str, object]]:
    """[(label, spec)] a case is scored with: its "specs", or the defaults of its language."""
    language = canonical_language(case.get("language") or "python")
    if language is None:
        raise ValueError(f"attack {case.get('id')!r}: language {case.get('language')!r} is not one the sandbox runs")
    default = ["call", "assert"] if language == "python" else ["call"]
    return _specs(case.get("specs", default), language)


def _specs(given: list, language: str = "python") -> list[tuple[str, object]]:
    """[(label, spec)] from spec names (SPECS) and whole specs (labelled by position and kind)."""
    out = []
    for i, s in enumerate(given):
        if isinstance(s, str):
            if s not in SPECS:
                raise ValueError(f"attack spec {s!r}: not one of {sorted(SPECS)}; or give a whole spec (rewards.spec)")
            out.append((s, _named_spec(s, language)))
        else:
            parsed = specs.parse(s)
            out.append((f"spec{i}:{parsed.kind}", parsed))
    return out


def _check_outcome(o, label: str) -> str:
    """A reason if the outcome carries a category outside CATEGORIES (it would reach the rollout store)."""
    bad = [c for c in [o.category, *o.tests] if type(c) is not str or c not in CATEGORIES]
    return f"{label}: categories outside CATEGORIES: {bad!r}" if bad else ""


def run_cases(cases: list[dict], timeout: float = 3.0, evaluator: Evaluator | None = None,
              probes: Probes | None = None) -> list[CaseReport]:
    """probes: where the damage probes live (default: the shared attack file's locations, made and removed here)."""
    own = evaluator is None
    ev = evaluator or Evaluator(limits=Limits(timeout=timeout))
    own_probes = probes is None
    probes = probes or Probes()
    reports = []
    try:
        ev.sandbox.start()
        for case in cases:
            reports.append(_run_case(ev, probes, case))
            probes.reset()
    finally:
        if own_probes:
            probes.close()
        if own:
            ev.close()
    return reports


def _batch(ev: Evaluator, items: list) -> list:
    """items: (label, code, spec, expected reward) -> [(label, outcome, expected reward)]."""
    if not items:
        return []
    outcomes = ev.evaluate([code for _, code, _, _ in items], [sp for _, _, sp, _ in items])
    return [(label, o, want) for (label, _, _, want), o in zip(items, outcomes, strict=True)]


def _run_case(ev: Evaluator, probes: Probes, case: dict) -> CaseReport:
    want = expected_reward(case.get("expected_outcome", ""))
    report = CaseReport(id=case["id"], expected=want, verdicts={}, correct=False)
    if case["id"].startswith("kill_all") and "namespaces" not in ev.sandbox.active_layers:
        report.harness_failure = "skipped: no PID namespace, running it would attack this machine"
        return report
    t0, peak0 = time.monotonic(), own_peak_kib()
    attack = [(label, probes.localise(case["code"]), sp, want) for label, sp in case_specs(case)]
    batches = {"before": [], "with": [], "after": []}
    for i, n in enumerate(case.get("neighbours", [])):
        n_want = expected_reward(n.get("expected_outcome", "reward 1"))
        for label, sp in case_specs({"specs": ["call"], **n}):
            batches[n.get("when", "with")].append((f"neighbour{i}/{label}", probes.localise(n["code"]), sp, n_want))
    try:
        results = _batch(ev, batches["before"]) + _batch(ev, batches["with"] + attack) + _batch(ev, batches["after"])
        alive = ev.evaluate([CANONICAL], [ASSERT_SPEC])[0]
    except Exception as exc:  # the harness itself broke: that is what this tool is for
        report.harness_failure = f"{type(exc).__name__}: {exc}"
        return report
    report.seconds = round(time.monotonic() - t0, 2)
    report.verdicts = {label: o.category for label, o, _ in results}
    outputs = "".join(o.stdout + o.stderr + o.detail for _, o, _ in results if type(o.stdout) is str)
    report.damage = probes.damage(outputs, ev.sandbox.cgroup_paths, ev.sandbox.runner_pid)
    grown = (own_peak_kib() - peak0) >> 10
    if grown > HARNESS_GROWTH_MB:
        report.damage.append(f"this process's peak memory grew by {grown} MiB")
    # Compiled languages add a compile step (with its own time limit) and a runtime's start-up to each program.
    compiled = any((getattr(sp, "language", None) or "python") != "python" for _, _, sp, _ in attack)
    slowest = ev.limits.timeout * 3 + 10 * (1 + len(results) // ev.sandbox.max_concurrency) + 60 * compiled
    if report.seconds > slowest:
        report.damage.append(f"the case took {report.seconds}s (more than {slowest:.0f}s): trusted code stalled")
    failures = [_check_outcome(o, label) for label, o, _ in results]
    if alive.category != "passed":
        failures.append(f"harness unresponsive after the case: canonical solution got {alive.category}")
    failures += ["sandbox_error: " + o.detail for _, o, _ in results if o.category == "sandbox_error"]
    report.harness_failure = "; ".join(f for f in failures if f)
    right = [{"any": True, "0": o.category != "passed", "1": o.category == "passed"}[w] for _, o, w in results]
    report.correct = all(right) and not report.harness_failure
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", help="attack files (format of shared/sandbox-attacks/attacks.json)")
    ap.add_argument("--timeout", type=float, default=3.0, help="per-program wall-clock limit in seconds")
    ap.add_argument("--probe-dir", type=Path, default=None,
                    help="put the victim folder and the secret file here and listen on a free port, instead of "
                         "/tmp/sbx_victim, ~/fake_secret.txt and port 47123 (attack code is aimed to match), so "
                         "that several runs can share a machine")
    args = ap.parse_args(argv)
    cases = [c for f in args.files for c in json.loads(Path(f).read_text())]
    probes = None
    if args.probe_dir is not None:
        args.probe_dir.mkdir(parents=True, exist_ok=True)
        probes = Probes(args.probe_dir / "sbx_victim", 0, args.probe_dir / "fake_secret.txt")
    try:
        reports = run_cases(cases, timeout=args.timeout, probes=probes)
    finally:
        if probes is not None:
            probes.close()
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
