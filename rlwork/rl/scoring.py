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
        self.fns = [get_reward(name, sandbox=sandbox) for name in cfg.functions]
        self.weights = list(cfg.weights)
        self.names = tuple(reward_name(fn) for fn in self.fns)
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"rewards.functions={list(cfg.functions)} names a reward twice: list each once")

    def score(self, prompts: list[str], completions: list[str], problems: list[dict[str, Any]]) -> StepScores:
        columns = {key: [p.get(key) for p in problems] for key in problems[0]} if problems else {}
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
        }
        row.update({f"reward/{name}": float(scores.per_func[i, r]) for r, name in enumerate(scores.names)})
        rows.append(row)
    return rows
