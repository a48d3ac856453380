"""Problems -> the prompt batches a step consumes, in a seeded, resumable order."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from rlwork.config import DataConfig
from rlwork.data.loading import instruction_prompt, load_problems, render_prompt

logger = logging.getLogger(__name__)


def load_split(cfg: DataConfig, split: str, seed: int) -> list[dict[str, Any]]:
    """The problems of one split as plain rows; malformed rows raise, or are skipped and counted loudly."""
    options: dict[str, Any] = {}
    if cfg.dataset == "synthetic":
        options = dict(n_train=cfg.synthetic_train, n_heldout=cfg.synthetic_heldout, seed=seed,
                       fresh=cfg.synthetic_fresh, n_rl=cfg.synthetic_rl, train_mix=cfg.synthetic_train_mix,
                       examples=cfg.synthetic_examples)
    source = list(cfg.data_files) or cfg.hub_name
    name = "mapped" if cfg.columns else cfg.dataset
    loaded = load_problems(name, source, split=split, columns=dict(cfg.columns) or None,
                           skip_malformed=cfg.skip_malformed, **options)
    if loaded.skipped:
        logger.warning("skipped %d malformed rows of %s (first: %s)", len(loaded.skipped), cfg.dataset,
                       loaded.skipped[0])
    rows = loaded.dataset.to_list()
    if not rows:
        raise ValueError(f"data.dataset={cfg.dataset!r} split={split!r} has no usable problems")
    return rows


@dataclass(frozen=True)
class PromptBatch:
    problems: list[dict[str, Any]]
    texts: list[str]


class PromptStream:
    """Epochs of seeded permutations over the problems; `state()`/`load_state()` make resume exact."""

    def __init__(self, problems: list[dict[str, Any]], tokenizer: Any, chat: bool, seed: int,
                 style: str = "instruct"):
        self.problems, self.tokenizer, self.chat, self.seed, self.style = problems, tokenizer, chat, seed, style
        self.epoch, self.position = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 7919 + epoch)
        return torch.randperm(len(self.problems), generator=g).tolist()

    def text(self, problem: dict[str, Any]) -> str:
        return render_prompt(self.tokenizer, instruction_prompt(problem, self.chat, self.style), self.chat)

    def next(self, count: int) -> PromptBatch:
        picked = []
        while len(picked) < count:
            if self.position == len(self._order):
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
            picked.append(self.problems[self._order[self.position]])
            self.position += 1
        return PromptBatch(picked, [self.text(p) for p in picked])

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._permutation(self.epoch)
