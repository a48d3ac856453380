"""An RL run's curve in windows of steps, from RUN/metrics.jsonl (the demo's lab notebook, README).

    python bench/rlcurve.py RUN [WINDOW]

Per window: mean training reward of the first rollout round (fresh prompts, before refilling) and after refilling,
share of groups with mixed rewards
before refilling, mean KL to the reference, in-training eval pass@1 logged in the window.
"""

from __future__ import annotations

import json
import math
import sys


def main(run: str, window: int = 10) -> None:
    with open(f"{run}/metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]

    def mean(xs):
        xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
        return round(sum(xs) / len(xs), 4) if xs else None

    for start in range(0, len(rows), window):
        w = rows[start:start + window]
        print(json.dumps({
            "steps": f"{w[0]['step'] + 1}-{w[-1]['step'] + 1}",
            "reward_fresh": mean([r.get("reward/mean_before_resample") for r in w]),
            "reward": mean([r.get("reward/mean") for r in w]),
            "mixed_groups": mean([1 - r["reward/frac_zero_std_before_resample"] for r in w
                                  if "reward/frac_zero_std_before_resample" in r]),
            "kl": mean([r.get("policy/kl") for r in w]),
            "clipfrac": mean([r.get("policy/clipfrac") for r in w]),
            "len": mean([r.get("completion/len_mean") for r in w]),
            "step_s": mean([r.get("perf/step_s") for r in w]),
            "eval": [round(r["eval/pass@1"], 3) for r in w if r.get("eval/pass@1") is not None],
        }))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 10)
