"""Re-score a run's saved rollouts with other reward functions or weights, without generating again.

Answers "what would training have seen with this reward?": per-reward means, how often the new total reward
disagrees with the one the run trained on (with example rows), and how the group advantages would change (mean
|delta advantage|, sign flips, groups that gain or lose their zero-std status, i.e. start or stop carrying signal).

Both old and new advantages are computed here with the same estimator, so the deltas come from the rewards alone;
`stored_advantage_max_abs_diff` says whether that estimator reproduces the advantages the run stored (it does when
it is the run's `algo.advantage`/`algo.scale_rewards`).

The rollout store keeps per-test verdicts, not the problems' test specs: rewards that read dataset columns (the
unit-test rewards read `tests`) need the problems, joined on `task_id`. Rows whose problem is missing get only the
`task_id` column, and such rewards score them None (NaN), which the report counts as unscorable.

Shape letters: N rows, G generations per group, B groups of one step, R reward functions.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from rlwork.config import ConfigError, RewardsConfig
from rlwork.rl.advantages import DEFAULT_SCALE, compute_advantages, zero_std_groups
from rlwork.rl.scoring import RewardScorer
from rlwork.runtime.tracking import load_rollouts

EXCERPT_CHARS = 160


def _num(x: float | Tensor) -> float | None:
    """A JSON-able float: NaN/inf -> None."""
    x = float(x)
    return x if math.isfinite(x) else None


def _nanmean(x: Tensor) -> float | None:
    return _num(torch.nanmean(x)) if x.numel() else None


def _ordered_rows(run_dir: str | os.PathLike, steps: Sequence[int] | None) -> list[dict[str, Any]]:
    """Saved rows sorted by (step, group_id); the sort is stable, so rows keep their order within a group."""
    rows = load_rollouts(run_dir).to_list()
    if steps is not None:
        wanted = set(steps)
        rows = [r for r in rows if r["step"] in wanted]
        if not rows:
            raise ValueError(f"steps={sorted(wanted)}: none of them was saved under {run_dir}")
    return sorted(rows, key=lambda r: (r["step"], r["group_id"]))


def _group_size(rows: Sequence[Mapping[str, Any]], num_generations: int | None) -> int:
    sizes = Counter((r["step"], r["group_id"]) for r in rows)
    found = set(sizes.values())
    if len(found) != 1:
        raise ValueError(f"groups have different sizes {sorted(found)}: the rollouts must hold whole groups of G rows")
    size = found.pop()
    if num_generations is not None and num_generations != size:
        raise ConfigError(f"algo.num_generations={num_generations} but the saved groups hold {size} rows each: set "
                         f"algo.num_generations={size} (`rlwork rescore` reads it from the run's saved config)")
    return size


def _reward_columns(rows: Sequence[Mapping[str, Any]], problems: Sequence[Mapping[str, Any]] | None) -> tuple:
    """One dict of dataset columns per row (the same keys for all, as the scorer needs), and rows without one."""
    by_id = {str(p["task_id"]): p for p in problems or ()}
    keys = sorted({k for p in by_id.values() for k in p} | {"task_id"})
    columns, missing = [], 0
    for r in rows:
        problem = by_id.get(str(r["task_id"]))
        missing += problem is None
        problem = problem or {"task_id": r["task_id"]}
        columns.append({k: problem.get(k) for k in keys})
    return columns, missing


def _step_slices(rows: Sequence[Mapping[str, Any]]) -> list[slice]:
    """Contiguous row ranges of each step (rows are sorted by step)."""
    bounds = [i for i in range(1, len(rows)) if rows[i]["step"] != rows[i - 1]["step"]]
    return [slice(a, b) for a, b in zip([0, *bounds], [*bounds, len(rows)], strict=True)]


def _disagreement(old: Tensor, new: Tensor, atol: float) -> Tensor:
    """[N] bool: the rewards differ by more than atol, or exactly one of them is NaN (unscorable)."""
    nan_old, nan_new = torch.isnan(old), torch.isnan(new)
    return (nan_old != nan_new) | (~nan_old & ~nan_new & ((old - new).abs() > atol))


def _examples(rows, old: Tensor, new: Tensor, differ: Tensor, count: int) -> list[dict[str, Any]]:
    """The `count` disagreeing rows with the largest change (a row that became or stopped being NaN first)."""
    gap = torch.where(torch.isnan(old) | torch.isnan(new), torch.inf, (old - new).abs())
    order = sorted(torch.nonzero(differ).flatten().tolist(), key=lambda i: -float(gap[i]))
    return [{"step": rows[i]["step"], "task_id": rows[i]["task_id"], "group_id": rows[i]["group_id"],
             "completion": rows[i]["completion"][:EXCERPT_CHARS], "old": _num(old[i]), "new": _num(new[i])}
            for i in order[:count]]


def rescore(
    run_dir: str | os.PathLike,
    reward_names: Sequence[str],
    weights: Sequence[float] | None = None,
    num_generations: int | None = None,
    advantage_estimator: str = "grpo",
    *,
    scale_rewards: str | None = None,
    problems: Sequence[Mapping[str, Any]] | None = None,
    steps: Sequence[int] | None = None,
    reward_kwargs: dict[str, dict] | None = None,
    timeout_s: float = 5.0,
    workers: int | None = None,
    allow_weak_isolation: bool = False,
    atol: float = 1e-6,
    max_examples: int = 5,
    progress: bool = True,
) -> dict[str, Any]:
    """Score the completions saved under `run_dir/rollouts` with `reward_names` (weighted by `weights`, default 1
    each) and compare with the rewards and advantages the run had. Returns a JSON-able dict (NaN -> None).

    num_generations: G; None = read from the saved groups (a given value must match them). advantage_estimator /
    scale_rewards: as `algo.advantage` / `algo.scale_rewards` (None = the estimator's default), applied per step to
    the old and the new rewards alike. problems: dataset rows joined on `task_id` for rewards that read columns
    (unit tests); e.g. `load_split(cfg.data, cfg.data.split, cfg.seed)`. steps: only these steps (None = all).
    Rewards differ when |old - new| > atol or exactly one is NaN. reward_kwargs: parameters of parameterised
    rewards by name (`rewards.kwargs`). The store keeps completion text, not token ids, so a length reward
    measures characters here where training measured tokens.
    """
    from tqdm.auto import tqdm

    weights = tuple(weights) if weights is not None else (1.0,) * len(reward_names)
    rewards_cfg = RewardsConfig(functions=tuple(reward_names), weights=tuple(float(w) for w in weights),
                                kwargs=dict(reward_kwargs or {}), timeout_s=timeout_s, workers=workers,
                                allow_weak_isolation=allow_weak_isolation)
    rows = _ordered_rows(run_dir, steps)
    G = _group_size(rows, num_generations)
    columns, missing = _reward_columns(rows, problems)
    scorer = RewardScorer(rewards_cfg)
    per_func, totals, errors = [], [], {}
    try:
        for s in tqdm(_step_slices(rows), desc="rescore", unit="step", disable=not progress):
            scores = scorer.score([r["prompt"] for r in rows[s]], [r["completion"] for r in rows[s]], columns[s])
            per_func.append(scores.per_func)
            totals.append(scores.total)
            for name, err in scores.errors.items():
                errors.setdefault(name, {})[str(rows[s.start]["step"])] = err
    finally:
        scorer.close()
    per_func = torch.cat(per_func).double()  # [N, R]
    new = torch.cat(totals).double()  # [N]
    old = torch.tensor([r["reward"] for r in rows], dtype=torch.float64)  # [N]
    stored_adv = torch.tensor([r["advantage"] for r in rows], dtype=torch.float64)  # [N]
    advantages = _advantage_changes(rows, old, new, stored_adv, G, advantage_estimator, scale_rewards)
    differ = _disagreement(old, new, atol)
    languages = [_row_language(r, c) for r, c in zip(rows, columns, strict=True)]
    return {
        "run_dir": str(run_dir), "steps": sorted({r["step"] for r in rows}), "num_rows": len(rows),
        "num_groups": len(rows) // G, "num_generations": G, "reward_names": list(scorer.names),
        "weights": list(rewards_cfg.weights), "rows_without_problem": missing, "errors": errors,
        "new": _reward_means(per_func, scorer.names, new),
        "old": _stored_means(rows, old),
        "disagreement": {
            "atol": atol, "rows": int(differ.sum()), "frac": _num(differ.double().mean()),
            "per_reward": _per_reward_disagreement(rows, per_func, scorer.names, atol),
            "examples": _examples(rows, old, new, differ, max_examples),
        },
        "advantages": advantages,
        "by_language": _language_split(languages, old, new, differ) if set(languages) != {"python"} else {},
    }


def _row_language(row: Mapping[str, Any], columns: Mapping[str, Any]) -> str:
    """The language a saved row ran in (stored by runs since issue 21), else its problem's, else Python."""
    lang = row.get("language") or columns.get("language")
    return lang if lang and lang != "any" else "python"


def _language_split(languages: Sequence[str], old: Tensor, new: Tensor, differ: Tensor) -> dict[str, Any]:
    """Per language: rows, old and new mean total reward, fraction of rows whose reward changed."""
    out = {}
    for lang in sorted(set(languages)):
        mask = torch.tensor([x == lang for x in languages])  # [N]
        out[lang] = {"rows": int(mask.sum()), "old_mean": _nanmean(old[mask]), "new_mean": _nanmean(new[mask]),
                     "disagreement_frac": _num(differ[mask].double().mean())}
    return out


def _reward_means(per_func: Tensor, names: Sequence[str], total: Tensor) -> dict[str, Any]:
    out = {name: {"mean": _nanmean(col), "frac_unscorable": _num(torch.isnan(col).double().mean())}
           for name, col in zip(names, per_func.unbind(1), strict=True)}
    out["total"] = {"mean": _nanmean(total), "frac_unscorable": _num(torch.isnan(total).double().mean())}
    return out


def _stored_means(rows: Sequence[Mapping[str, Any]], old: Tensor) -> dict[str, Any]:
    out = {}
    for key in sorted(k for k in rows[0] if k.startswith("reward/")):
        col = torch.tensor([math.nan if r[key] is None else r[key] for r in rows], dtype=torch.float64)
        out[key.removeprefix("reward/")] = {"mean": _nanmean(col),
                                            "frac_unscorable": _num(torch.isnan(col).double().mean())}
    out["total"] = {"mean": _nanmean(old), "frac_unscorable": _num(torch.isnan(old).double().mean())}
    return out


def _per_reward_disagreement(rows, per_func: Tensor, names: Sequence[str], atol: float) -> dict[str, float | None]:
    """For each new reward the run also logged (`reward/<name>`): the fraction of rows where the two differ."""
    out = {}
    for name, col in zip(names, per_func.unbind(1), strict=True):
        key = f"reward/{name}"
        if key in rows[0]:
            stored = torch.tensor([math.nan if r[key] is None else r[key] for r in rows], dtype=torch.float64)
            out[name] = _num(_disagreement(stored, col, atol).double().mean())
    return out


def _advantage_changes(rows, old: Tensor, new: Tensor, stored: Tensor, G: int, estimator: str,
                       scale: str | None) -> dict[str, Any]:
    """Old vs new advantages (one estimator, per step as in training) and zero-std status of every group."""
    old_adv, new_adv, old_zero, new_zero = [], [], [], []
    for s in _step_slices(rows):
        old_adv.append(compute_advantages(old[s], G, estimator, scale))  # [N_step]
        new_adv.append(compute_advantages(new[s], G, estimator, scale))
        old_zero.append(zero_std_groups(old[s], G))  # [B_step]
        new_zero.append(zero_std_groups(new[s], G))
    old_adv, new_adv = torch.cat(old_adv), torch.cat(new_adv)  # [N]
    old_zero, new_zero = torch.cat(old_zero), torch.cat(new_zero)  # [sum B]
    delta = (new_adv - old_adv).abs()  # [N]
    stored_diff = (old_adv - stored).abs()
    stored_diff = stored_diff[~torch.isnan(stored_diff)]
    return {
        "estimator": estimator, "scale_rewards": scale if scale is not None else DEFAULT_SCALE.get(estimator),
        "mean_abs_delta": _num(delta.mean()), "max_abs_delta": _num(delta.max()),
        "sign_flip_frac": _num((old_adv * new_adv < 0).double().mean()),
        "sign_change_frac": _num((torch.sign(old_adv) != torch.sign(new_adv)).double().mean()),
        "zero_std_frac_old": _num(old_zero.double().mean()), "zero_std_frac_new": _num(new_zero.double().mean()),
        "zero_std_changed_frac": _num((old_zero != new_zero).double().mean()),
        "groups_became_zero_std": int((new_zero & ~old_zero).sum()),
        "groups_gained_signal": int((old_zero & ~new_zero).sum()),
        "stored_advantage_max_abs_diff": _num(stored_diff.max()) if stored_diff.numel() else None,
    }


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "nan" if x is None else format(x, spec)


def format_rescore_report(result: Mapping[str, Any]) -> str:
    """A plain-text summary of `rescore`'s result, for the terminal."""
    r, adv, dis = result, result["advantages"], result["disagreement"]
    steps = r["steps"]
    lines = [f"rescore {r['run_dir']}: {r['num_rows']} rows, {r['num_groups']} groups of G={r['num_generations']}, "
             f"steps {steps[0]}-{steps[-1]} ({len(steps)} saved)",
             "new: " + " + ".join(f"{w:g} * {n}" for n, w in zip(r["reward_names"], r["weights"], strict=True))]
    width = max(len(n) for n in [*r["new"], *r["old"]]) + 4
    lines.append(f"  {'reward':<{width}}{'mean':>8}  {'unscorable':>10}")
    for side in ("new", "old"):
        for name, m in r[side].items():
            lines.append(f"  {side + ' ' + name:<{width}}{_fmt(m['mean']):>8}  {_fmt(m['frac_unscorable']):>10}")
    if r["rows_without_problem"] and any(m["frac_unscorable"] for m in r["new"].values()):
        lines.append(f"  {r['rows_without_problem']} rows had no problem row (task_id not in `problems`): rewards "
                     "that read dataset columns (tests) could not score them")
    for name, errs in r["errors"].items():
        lines.append(f"  {name} raised on {len(errs)} step(s), e.g. {next(iter(errs.values()))}")
    lines.append(f"disagreement: {dis['rows']}/{r['num_rows']} rows ({_fmt(dis['frac'], '.1%')}) differ by more "
                 f"than {dis['atol']:g}" + "".join(f"; {n}: {_fmt(f, '.1%')} vs the run's"
                                                    for n, f in dis["per_reward"].items()))
    for lang, m in r.get("by_language", {}).items():
        lines.append(f"  {lang}: {m['rows']} rows, total reward {_fmt(m['old_mean'])} -> {_fmt(m['new_mean'])}, "
                     f"{_fmt(m['disagreement_frac'], '.1%')} differ")
    for ex in dis["examples"]:
        text = ex["completion"].replace("\n", "\\n")
        lines.append(f"  step {ex['step']} {ex['task_id']} old {_fmt(ex['old'])} new {_fmt(ex['new'])}  {text[:80]!s}")
    lines.append(
        f"advantages ({adv['estimator']}, scale {adv['scale_rewards']}): mean |delta| "
        f"{_fmt(adv['mean_abs_delta'])}, max {_fmt(adv['max_abs_delta'])}; sign flips "
        f"{_fmt(adv['sign_flip_frac'], '.1%')} of rows; zero-std groups {_fmt(adv['zero_std_frac_old'], '.1%')} -> "
        f"{_fmt(adv['zero_std_frac_new'], '.1%')} ({adv['groups_became_zero_std']} lost their signal, "
        f"{adv['groups_gained_signal']} gained one)")
    gap = adv["stored_advantage_max_abs_diff"]
    if gap is not None and gap > 1e-4:
        lines.append(f"note: the run's stored advantages differ from {adv['estimator']}'s on its own rewards (max "
                     f"{gap:.3g}): it trained with another estimator or scaling; pass the run's to compare like "
                     "for like")
    return "\n".join(lines)
