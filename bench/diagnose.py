"""What the policy gets wrong on an evaluation split of the synthetic family (the demo's lab notebook, README).

    python bench/diagnose.py TRAIN_N HELDOUT_N FRESH(0/1) RUN/eval_before.json [RUN/eval_after.json ...]

Per sample (the report's samples against the split's problems, rebuilt from the report's config): the sandbox
verdict, and for failures a structural comparison of the body with the reference, with numbers and quoted
characters replaced by '#':
- same_shape_wrong_const: every step has the reference's template but a constant differs (e.g. a training constant
  instead of the docstring's); const_in_doc: of those, how many used only constants that appear in the prompt
- wrong_steps: same number of steps, some template differs; wrong_count: a different number of steps
- no_stop: the completion never ended (no return line).
- went_on: (any failing verdict) the completion wrote past the function: a line at column 0 after the body, the
  next function of a file (`sft.continue_file`), usually cut at the canvas's end.
Prints one JSON line per report.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter

NUM = re.compile(r"'[^']*'|-?\d+")


def steps(body: str) -> list[str]:
    lines = [ln.strip() for ln in body.splitlines() if ln.strip()]
    out = []
    for ln in lines:
        if ln.startswith("x = "):
            out.append(ln[4:])
        elif ln.startswith("return "):
            out.append(ln[7:])
            break
        else:
            out.append("?" + ln)
    return out


def template(expr: str) -> str:
    return NUM.sub("#", expr)


def consts(expr: str) -> list[str]:
    return NUM.findall(expr)


def classify(completion: str, reference: str, prompt: str) -> str:
    ref = steps(reference.split("\n", 1)[1])
    got = steps(completion)
    if not got or not any(s for s in completion.splitlines() if s.strip().startswith("return")):
        return "no_return"
    if len(got) != len(ref):
        return "wrong_count"
    if [template(s) for s in got] != [template(s) for s in ref]:
        return "wrong_steps"
    if got == ref:
        return "same_as_reference"
    doc_consts = set(NUM.findall(prompt.split('"""', 1)[1])) | {c.strip("'") for c in NUM.findall(prompt)}
    used = [c for s in got for c in consts(s)]
    return "wrong_const_in_doc" if all(c.strip("'") in doc_consts or c in doc_consts for c in used) else \
        "wrong_const_not_in_doc"


def main(args: list[str]) -> None:
    from rlwork.config import DataConfig
    from rlwork.data.prompts import load_split
    from rlwork.demo import wrote_past_function

    n_train, n_heldout, fresh, paths = int(args[0]), int(args[1]), bool(int(args[2])), args[3:]
    data = DataConfig(dataset="synthetic", synthetic_train=n_train, synthetic_heldout=n_heldout, synthetic_fresh=fresh)
    for path in paths:
        with open(path) as f:
            report = json.load(f)
        policy = next(iter(report["policies"].values()))
        problems = {p["task_id"]: p for p in load_split(data, report["split"], report["seed"])}
        cats, by_len = Counter(), {}
        for s in policy["samples"]:
            p = problems[s["task_id"]]
            n = len(p["composition"].split("|"))
            c = "passed" if s["verdict"] == "passed" else "went_on" if wrote_past_function(s["completion"]) else (
                s["verdict"] if s["verdict"] not in ("wrong_answer",) else classify(s["completion"], p["reference"],
                                                                                    p["prompt"]))
            cats[c] += 1
            by_len.setdefault(n, Counter())[c] += 1
        total = sum(cats.values())
        print(json.dumps({"report": path, "pass@k": policy["pass_at_k"],
                          "categories": {k: round(v / total, 3) for k, v in cats.most_common()},
                          "pass_by_len": {k: round(v["passed"] / sum(v.values()), 3)
                                          for k, v in sorted(by_len.items())},
                          "n_by_len": {k: sum(v.values()) for k, v in sorted(by_len.items())}}))


if __name__ == "__main__":
    main(sys.argv[1:])
