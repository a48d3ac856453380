"""The tasks of a split that a policy solves sometimes: an RL pool filtered by the policy's own pass rate.

    rlwork eval --config configs/tiny.yaml [overrides] eval.split=rl --out screen.json
    python bench/partial_pool.py screen.json tasks.jsonl --config configs/tiny.yaml [overrides]
    rlwork train --config configs/tiny.yaml [overrides] data.dataset=mapped data.data_files=[tasks.jsonl] \
        "data.columns={prompt: prompt, tests: tests, entry_point: entry_point, task_id: task_id, reference: reference}"

Reads the report's split (`split` and the config it names through the same overrides), keeps the problems whose
samples passed at least once and not every time (the groups that carry GRPO signal), and writes them as JSONL with
the columns above. Prints how many tasks each pass count had. Task ids alone cannot tell two configs' splits apart,
so each kept task's first passing sample is run again against the task as loaded here: a task it fails means the
overrides differ from the report's, and nothing is written. The lab notebook's f5/f6 runs (README).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

from rewards.unit_tests import evaluate
from rlwork.config import load_config
from rlwork.data.prompts import load_split

COLUMNS = ("prompt", "tests", "entry_point", "task_id", "reference")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", help="an `rlwork eval --out` report of one policy")
    parser.add_argument("out", help="the JSONL file of partially solved tasks to write")
    parser.add_argument("--config", required=True, help="the config (and overrides) the report was made with")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args()

    with open(args.report) as f:
        report = json.load(f)
    if len(report["policies"]) != 1:
        raise SystemExit(f"{args.report} scores {len(report['policies'])} policies: screen one")
    per_problem = next(iter(report["policies"].values()))["per_problem"]
    cfg = load_config(args.config, args.overrides)
    rows = load_split(cfg.data, report["split"], report["seed"])
    missing = [r["task_id"] for r in rows if r["task_id"] not in per_problem]
    if missing:
        raise SystemExit(f"{len(missing)} tasks of split {report['split']} are not in the report (first: "
                         f"{missing[0]}): pass the overrides the report was made with")
    n = report["num_samples"]
    counts = Counter(per_problem[r["task_id"]]["correct"] for r in rows)
    keep = [r for r in rows if 0 < per_problem[r["task_id"]]["correct"] < n]
    passing = {}
    for sample in next(iter(report["policies"].values()))["samples"]:
        if sample["verdict"] == "passed":
            passing.setdefault(sample["task_id"], sample["completion"])
    outcomes = evaluate([passing[r["task_id"]] for r in keep], [r["tests"] for r in keep],
                        prompts=[r["prompt"] for r in keep])
    wrong = [r["task_id"] for r, o in zip(keep, outcomes, strict=True) if o.category != "passed"]
    if wrong:
        raise SystemExit(f"{len(wrong)} of {len(keep)} kept tasks (first: {wrong[0]}) fail their own passing sample "
                         "as loaded here: pass the overrides the report was made with")
    with open(args.out, "w") as f:
        for row in keep:
            f.write(json.dumps({k: row[k] for k in COLUMNS}) + "\n")
    print(json.dumps({"split": report["split"], "tasks": len(rows), "kept": len(keep),
                      "by_passes": {str(k): counts[k] for k in sorted(counts)}}))


if __name__ == "__main__":
    main()
