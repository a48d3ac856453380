"""Sandbox throughput per language (`python bench/sandbox.py --languages`), side by side in one run.

For each language, N distinct programs of the same function (`add(a, b)`, each with its own constant so no two
share a build) against one call test of two cases:

    ours_cold     our sandbox with an empty compile cache: a compile job per program, then the run jobs
    ours_warm     the same programs again: compiled files from the cache, run jobs only
    naive         what a MultiPL-E-style harness does: per program, in a subprocess of this process (no sandbox),
                  compile the program with an embedded assert main using the same compiler command, run it, and
                  take exit status 0 as a pass (which a hostile program can forge; see tests/rewards/
                  multilingual_attacks.json), on a thread pool as wide as our sandbox
    naive_run     its run step alone, on the binaries it compiled (the naive counterpart of ours_warm)

Python has no compile step: its row is our call path, cold and warm being the same thing, against a plain
`python3 file.py` per program. The last line is one JSON object; it carries the 1-minute load average before and
after, since a shared machine makes the figures noisy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from rewards import spec
from rewards.harness.types import Signature
from rewards.sandbox import Evaluator, Limits
from rewards.sandbox.compile_cache import CompileCache
from rewards.sandbox.languages import LANGUAGES, ToolchainMissing

PROGRAM = {
    "python": "def add(a, b):\n    return a + b + {k} - {k}\n",
    "cpp": "long add(long a, long b) {{ return a + b + {k} - {k}; }}\n",
    "java": "class Problem {{\n    public static long add(long a, long b) {{ return a + b + {k} - {k}; }}\n}}\n",
    "javascript": "function add(a, b) {{ return a + b + {k} - {k}; }}\n",
    "rust": "fn add(a: isize, b: isize) -> isize {{ a + b + {k} - {k} }}\n",
    "go": "package main\n\nfunc add(a int, b int) int {{ return a + b + {k} - {k} }}\n",
}
# The naive harness: the same assertions, compiled into the program (MultiPL-E's way).
NAIVE_MAIN = {
    "python": "assert add(1, 2) == 3\nassert add(-1, 1) == 0\n",
    "cpp": "#include <cassert>\nint main() { assert(add(1, 2) == 3); assert(add(-1, 1) == 0); return 0; }\n",
    "java": "class Main {\n    public static void main(String[] a) {\n        if (Problem.add(1, 2) != 3 || "
            "Problem.add(-1, 1) != 0) System.exit(1);\n    }\n}\n",
    "javascript": "if (add(1, 2) !== 3 || add(-1, 1) !== 0) process.exit(1);\n",
    "rust": "fn main() { assert_eq!(add(1, 2), 3); assert_eq!(add(-1, 1), 0); }\n",
    "go": "func main() {\n\tif add(1, 2) != 3 || add(-1, 1) != 0 {\n\t\tpanic(\"fail\")\n\t}\n}\n",
}
CASES = (spec.CallCase([1, 2], 3), spec.CallCase([-1, 1], 0))


def _ours(lang: str, programs: list[str], workers: int | None) -> dict:
    sp = spec.CallSpec("add", CASES, language=lang, signature=Signature(("int", "int"), "int"))
    with Evaluator(limits=Limits(timeout=10.0), compile_cache=CompileCache(), max_concurrency=workers) as ev:
        ev.evaluate([PROGRAM[lang].format(k=10**6 + i) for i in range(4)], [sp] * 4)  # start-up, not timed
        rates, ok = [], True
        for _ in ("cold", "warm"):
            t0 = time.perf_counter()
            outs = ev.evaluate(programs, [sp] * len(programs))
            rates.append(len(programs) / (time.perf_counter() - t0))
            ok = ok and all(o.category == "passed" for o in outs)
        return {"ours_cold_per_s": round(rates[0], 2), "ours_warm_per_s": round(rates[1], 2), "ours_passed": ok,
                "cache": dict(ev.compile_cache.stats)}


def _naive_build(lang: str, program: str, where: str) -> tuple[list[list[str]], list[str]]:
    """(compile commands, run command) for program + NAIVE_MAIN in `where`: the sandbox's own commands, by path."""
    os.makedirs(where)
    if lang == "python":
        path = f"{where}/prog.py"
        with open(path, "w") as fh:
            fh.write(program + NAIVE_MAIN[lang])
        return [], [shutil.which("python3") or "python3", path]
    build = LANGUAGES[lang].build(program + ("" if lang == "go" else "\n") + NAIVE_MAIN[lang])
    os.makedirs(f"{where}/src")
    os.makedirs(f"{where}/out")  # the compile steps write here
    for name, text in build.sources.items():
        with open(f"{where}/src/{name}", "w") as fh:
            fh.write(text)
    fix = lambda a: a.replace("/tmp/src", f"{where}/src").replace("/tmp/out", f"{where}/out")  # noqa: E731
    steps = [[fix(a) for a in step] for step in build.steps]
    run = [fix(a).replace("/tmp/app", f"{where}/src" if build.keep_sources else f"{where}/out")
           .replace("{heap}", "512") for a in build.argv]
    if lang == "java":
        run[-1] = "Main"
    return steps, run


def _naive(lang: str, programs: list[str], workers: int) -> dict:
    root = tempfile.mkdtemp(prefix="bench-naive-")
    env = {"PATH": "/usr/bin:/bin", "HOME": root, **LANGUAGES[lang].compile_env()} if lang != "python" else \
        {"PATH": "/usr/bin:/bin"}

    def compile_one(i: int):
        steps, run = _naive_build(lang, programs[i], f"{root}/{i}")
        ok = all(subprocess.run(s, env=env, capture_output=True, timeout=120).returncode == 0 for s in steps)
        return run, ok

    def run_one(run: list[str]) -> bool:
        return subprocess.run(run, env=env, capture_output=True, timeout=60).returncode == 0

    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            t0 = time.perf_counter()
            built = list(pool.map(compile_one, range(len(programs))))
            passed = list(pool.map(run_one, [run for run, _ in built]))
            both = time.perf_counter() - t0
            t1 = time.perf_counter()
            list(pool.map(run_one, [run for run, _ in built]))
            run_only = time.perf_counter() - t1
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {"naive_per_s": round(len(programs) / both, 2), "naive_run_per_s": round(len(programs) / run_only, 2),
            "naive_passed": all(ok for _, ok in built) and all(passed)}


def main_languages(per_language: int, workers: int | None) -> dict:
    load_before = os.getloadavg()
    width = workers or max(2, 2 * (os.cpu_count() or 1))
    out = {"programs_per_language": per_language, "workers": width, "cores": os.cpu_count(), "languages": {}}
    for lang in PROGRAM:
        if lang != "python":
            try:
                LANGUAGES[lang].paths()
            except ToolchainMissing as exc:
                out["languages"][lang] = {"skipped": str(exc)}
                continue
        programs = [PROGRAM[lang].format(k=i) for i in range(per_language)]
        row = {**_ours(lang, programs, workers), **_naive(lang, programs, width)}
        row["cold_vs_naive"] = round(row["ours_cold_per_s"] / row["naive_per_s"], 2)
        row["warm_vs_naive_run"] = round(row["ours_warm_per_s"] / row["naive_run_per_s"], 2)
        out["languages"][lang] = row
        print(f"{lang}: {row}", flush=True)
    out["load_average_1m"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
    return out
