"""Phase 2 of a step: completions -> rewards per function (rewards/ does the work; this adapts it to tensors).

Shape letters: N rows, R reward functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from rewards.registry import get_reward, reward_name, score_all
from rewards.sandbox import CATEGORIES
from rewards.sandbox.languages import LANGUAGES
from rewards.unit_tests import summarise
from rlwork.config import RewardsConfig


@dataclass(frozen=True)
class StepScores:
    """Attributes:
    per_func: [N, R] float32; NaN = does not apply, unscorable, or the reward raised.
    total: [N] float32; the weighted sum over the rewards that apply (`rewards.registry.weighted_total`), NaN when
        none does.
    names: R reward names, in column order.
    errors: reward name -> the error it raised this step.
    outcomes: N sandbox outcomes (per-test verdicts) from the first reward that reports details
        (`rewards.registry`'s `detailed` method), or None per row.
    """

    per_func: Tensor
    total: Tensor
    names: tuple[str, ...]
    errors: dict[str, str]
    outcomes: list[Any]

    def select(self, rows: Tensor) -> StepScores:
        return StepScores(self.per_func[rows], self.total[rows], self.names, self.errors,
                          [self.outcomes[i] for i in rows.tolist()])

    def concat(self, other: StepScores) -> StepScores:
        return StepScores(torch.cat([self.per_func, other.per_func]), torch.cat([self.total, other.total]),
                          self.names, {**self.errors, **other.errors}, self.outcomes + other.outcomes)


class RewardScorer:
    """The configured reward functions and weights; rewards that run programs get the configured sandbox."""

    def __init__(self, cfg: RewardsConfig):
        sandbox = dict(timeout=cfg.timeout_s, max_concurrency=cfg.workers, allow_weak=cfg.allow_weak_isolation)
        self.fns = [get_reward(name, sandbox=sandbox, kwargs=cfg.kwargs.get(name)) for name in cfg.functions]
        self.weights = list(cfg.weights)
        self.names = tuple(reward_name(fn) for fn in self.fns)
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"rewards.functions={list(cfg.functions)} names a reward twice: list each once")

    def score(self, prompts: list[str], completions: list[str], problems: list[dict[str, Any]],
              completion_ids: list[list[int]] | None = None) -> StepScores:
        """Every reward on the batch; rewards get the problems' columns, and `completion_ids` (each completion's
        real tokens, as TRL passes them) when given, so length rewards count tokens."""
        columns = {key: [p.get(key) for p in problems] for key in problems[0]} if problems else {}
        if completion_ids is not None:
            columns["completion_ids"] = completion_ids
        result = score_all(self.fns, self.weights, prompts, completions, columns)
        per_func = torch.tensor([result.per_reward[name] for name in self.names], dtype=torch.float32).T  # [N, R]
        detailed = next(iter(result.details.values()), None)  # the first, in reward order
        outcomes = list(detailed) if detailed is not None else [None] * len(completions)
        return StepScores(per_func, torch.tensor(result.total, dtype=torch.float32), self.names,
                          dict(result.errors), outcomes)

    def close(self) -> None:
        for fn in self.fns:
            if hasattr(fn, "close"):
                fn.close()



def sandbox_metrics(scores: StepScores) -> dict[str, float]:
    """`sandbox/<category>_frac` over the programs run, for every category (0 when absent, so that every rank
    logs the same keys), and the mean fraction of tests passed (NaN when no program ran)."""
    ran = summarise([o for o in scores.outcomes if o is not None])
    metrics = {f"sandbox/{c}_frac": ran.get(f"sandbox/{c}_frac", 0.0) for c in CATEGORIES}
    metrics["sandbox/tests_passed_frac"] = ran.get("sandbox/tests_passed_frac", math.nan)
    return metrics


def step_languages(problems: list[dict[str, Any]]) -> tuple[str, ...]:
    """The languages a run's per-language metrics cover: those its problems name (`any`: every language the sandbox
    runs, as the answers pick); () for a Python-only dataset (no split to show)."""
    named = {p.get("language") or "python" for p in problems}
    if "any" in named:
        named = (named - {"any"}) | {"python", *LANGUAGES}
    return tuple(sorted(named)) if named != {"python"} else ()


def row_language(problem: dict[str, Any], outcome: Any) -> str:
    """The language a row's program ran in (the sandbox's outcome says; else the problem's; else Python)."""
    ran = getattr(outcome, "extra", {}).get("language") if outcome is not None else None
    return ran or (problem.get("language") if problem.get("language") not in (None, "any") else None) or "python"


def language_totals(problems: list[dict[str, Any]], rewards: Tensor, outcomes: list[Any],
                    languages: tuple[str, ...]) -> dict[str, float]:
    """Per-language sums (rows, scorable rows, reward sum, programs that passed) for `languages`: sums reduce exactly
    across ranks (`reduce_metrics` averages them, and a ratio of averages is a ratio of sums); `language_means`
    turns them into `reward/lang/<L>/mean` and `sandbox/lang/<L>/passed_frac` after the reduction.

    rewards: [N] float32, NaN = unscorable."""
    totals = {f"lang/{lang}/{k}": 0.0 for lang in languages for k in ("rows", "scored", "reward_sum", "passed")}
    for i, problem in enumerate(problems):
        lang = row_language(problem, outcomes[i])
        if lang not in languages:
            continue
        totals[f"lang/{lang}/rows"] += 1.0
        if not math.isnan(float(rewards[i])):
            totals[f"lang/{lang}/scored"] += 1.0
            totals[f"lang/{lang}/reward_sum"] += float(rewards[i])
        totals[f"lang/{lang}/passed"] += float(outcomes[i] is not None and outcomes[i].category == "passed")
    return totals


def language_means(metrics: dict[str, float]) -> dict[str, float]:
    """`metrics` with the sums of `language_totals` replaced by per-language means (NaN where no row had it)."""
    out = {k: v for k, v in metrics.items() if not k.startswith("lang/")}
    for key in metrics:
        if key.startswith("lang/") and key.endswith("/rows"):
            lang = key.split("/")[1]
            rows, scored = metrics[key], metrics[f"lang/{lang}/scored"]
            out[f"reward/lang/{lang}/mean"] = metrics[f"lang/{lang}/reward_sum"] / scored if scored else math.nan
            out[f"sandbox/lang/{lang}/passed_frac"] = metrics[f"lang/{lang}/passed"] / rows if rows else math.nan
            out[f"sandbox/lang/{lang}/rows"] = rows
    return out
def completion_token_ids(rollout) -> list[list[int]]:
    """Each row's real completion tokens (EOS included), for rewards that measure length in tokens."""
    return [ids[mask].tolist() for ids, mask in zip(rollout.completion_ids, rollout.completion_mask, strict=True)]


def rollout_rows(rollout, scores: StepScores, rewards: Tensor, advantages: Tensor) -> list[dict[str, Any]]:
    """One record per completion for the rollout store and the completions table."""
    rows = []
    for i in range(len(rollout.completions)):
        out = scores.outcomes[i]
        row = {
            "task_id": str(rollout.problems[i].get("task_id", "")),
            "prompt": rollout.prompts[i],
            "completion": rollout.completions[i],
            "reward": float(rewards[i]),
            "advantage": float(advantages[i]),
            "group_id": int(rollout.group_ids[i]),
            "verdict": out.category if out is not None else "",
            "tests": list(out.tests) if out is not None else [],
            "language": row_language(rollout.problems[i], out),
        }
        row.update({f"reward/{name}": float(scores.per_func[i, r]) for r, name in enumerate(scores.names)})
        rows.append(row)
    return rows
