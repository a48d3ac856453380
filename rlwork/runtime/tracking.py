"""Experiment tracking: metrics (JSONL, W&B, no-op), completion tables, and a parquet rollout store.

Metrics are one flat ``dict[str, float]`` per step with ``section/name`` keys (``reward/mean``,
``policy/clipfrac``, ``perf/rollout_s``). Only the main process logs; :func:`make_tracker` hands the other
ranks a :class:`NoOpTracker`, and :func:`reduce_metrics` averages values across ranks before logging.

W&B mode: an explicit ``wandb_mode`` wins; otherwise ``WANDB_MODE`` from the environment; otherwise
``"online"`` if ``WANDB_API_KEY`` is set; otherwise ``"offline"`` (runs sync later with ``wandb sync``). A
credential stored only by ``wandb login`` does not switch a run online: set ``WANDB_MODE=online``.

A resumed run continues its history: `rewind_run_files` drops what the killed process logged after its last
checkpoint (metrics lines, table rows, rollout files of the steps that run again), and the W&B run keeps its id
(``run_dir/wandb/run_id``), so W&B shows one run. W&B ignores what is logged for a step below the last one it
received, so the steps the killed process logged after its checkpoint keep their first values there; resume is
bit-exact, so those are the values the resumed run computes again (timings aside).

Why not accelerate's trackers (`accelerate.tracking`): they cover W&B (and others) but write no local JSONL, have
no completions table with nested cells, no parquet rollout store, and keep no run id across a resume; the W&B part
here is one ``wandb.init`` call, so wrapping it would add a layer without removing code.
"""

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from rlwork.runtime.trl_names import PREFIX, STEP_KEY, trl_aliases

METRICS_FILE = "metrics.jsonl"
ROLLOUT_DIR = "rollouts"
TABLE_DIR = "tables"
WANDB_DIR = "wandb"
WANDB_ID_FILE = "run_id"
ROLLOUT_REQUIRED = ("prompt", "completion", "advantage", "group_id")
WANDB_MODES = ("online", "offline", "disabled", "shared")


@runtime_checkable
class Tracker(Protocol):
    """What the trainer logs to. Implementations must accept any step order the trainer produces (increasing)."""

    def log(self, metrics: Mapping[str, float], step: int) -> None: ...

    def log_table(self, name: str, rows: Sequence[Mapping[str, Any]], step: int) -> None: ...

    def finish(self) -> None: ...


def _float(value: Any) -> float:
    """A metric value (float, int, bool, 0-d tensor, numpy scalar) as a Python float."""
    if isinstance(value, torch.Tensor):
        return float(value.detach().float().item())
    return float(value)


def _scalar(value: Any) -> float | None:
    """A metric value as a float for JSON; non-finite -> None (JSON null)."""
    value = _float(value)
    return value if math.isfinite(value) else None


def _cell(value: Any) -> Any:
    """A table/rollout cell: nested lists/dicts become JSON strings (a stable column type); tensors become scalars."""
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else json.dumps(value.tolist())
    if isinstance(value, Mapping | list | tuple):
        return json.dumps(value, sort_keys=True, default=str)
    return value


class NoOpTracker:
    """Logs nothing: non-main ranks, or tracking turned off."""

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def log_table(self, name: str, rows: Sequence[Mapping[str, Any]], step: int) -> None:
        pass

    def finish(self) -> None:
        pass


class JsonlTracker:
    """Appends ``{"step": step, **metrics}`` as one JSON line per call to ``run_dir/metrics.jsonl``.

    Non-finite values are written as ``null`` (standard JSON). Tables go to ``run_dir/tables/<name>.jsonl``,
    one row per line with its ``step``; nested cells stay nested. Lines are flushed at once, so a crash loses
    at most the line being written.
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / METRICS_FILE
        self._file = self.path.open("a", encoding="utf-8")

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        record = {"step": int(step), **{key: _scalar(value) for key, value in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def log_table(self, name: str, rows: Sequence[Mapping[str, Any]], step: int) -> None:
        table_dir = self.run_dir / TABLE_DIR
        table_dir.mkdir(exist_ok=True)
        with (table_dir / f"{name.replace('/', '_')}.jsonl").open("a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps({"step": int(step), **row}, default=str) + "\n")

    def finish(self) -> None:
        if not self._file.closed:
            self._file.close()


def resolve_wandb_mode(wandb_mode: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The W&B mode to run in: explicit argument, else ``WANDB_MODE``, else online iff ``WANDB_API_KEY``, else
    offline."""
    environ = os.environ if environ is None else environ
    if wandb_mode is not None:
        if wandb_mode not in WANDB_MODES:
            raise ValueError(f"wandb_mode={wandb_mode!r}: choose one of {WANDB_MODES}, or None to follow WANDB_MODE")
        return wandb_mode
    if environ.get("WANDB_MODE"):
        return environ["WANDB_MODE"]
    return "online" if environ.get("WANDB_API_KEY") else "offline"


class WandbTracker:
    """Weights & Biases run under ``run_dir/wandb``; tables are ``wandb.Table`` objects (nested cells as JSON).

    With ``resume``, the run continues the W&B run whose id ``run_dir/wandb/run_id`` holds (a new one if there is
    none); every run writes its id there.
    """

    def __init__(
        self,
        project: str,
        run_dir: str | os.PathLike,
        run_name: str | None = None,
        config: Mapping[str, Any] | None = None,
        mode: str | None = None,
        resume: bool = False,
    ) -> None:
        import wandb  # imported here: only the main process of a run that tracks with W&B pays for it

        self._wandb = wandb
        id_file = Path(run_dir) / WANDB_DIR / WANDB_ID_FILE
        id_file.parent.mkdir(parents=True, exist_ok=True)
        run_id = id_file.read_text().strip() if resume and id_file.is_file() else None
        self.run = wandb.init(
            project=project,
            name=run_name,
            dir=str(run_dir),
            config=dict(config or {}),
            mode=resolve_wandb_mode(mode),
            reinit="create_new",
            settings=wandb.Settings(console="off", silent=True, x_disable_stats=True),
            **({"id": run_id, "resume": "allow"} if run_id else {}),
        )
        id_file.write_text(self.run.id + "\n")
        self.run.define_metric(STEP_KEY)  # TRL's names plot against the HF Trainer's step, as in a TRL run
        self.run.define_metric(f"{PREFIX}*", step_metric=STEP_KEY)

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        # W&B charts NaN/inf natively, so keep them as floats (JSONL writes null instead). TRL's names for the
        # quantities TRL logs too go beside ours, so dashboards built for TRL runs read ours (runtime/trl_names.py).
        values = {key: _float(value) for key, value in metrics.items()}
        self.run.log({**values, **trl_aliases(values, int(step))}, step=int(step))

    def log_table(self, name: str, rows: Sequence[Mapping[str, Any]], step: int) -> None:
        columns = sorted({key for row in rows for key in row})
        data = [[_cell(row.get(col)) for col in columns] for row in rows]
        self.run.log({name: self._wandb.Table(columns=columns, data=data, allow_mixed_types=True)}, step=int(step))

    def finish(self) -> None:
        self.run.finish()


class MultiTracker:
    """Fans every call out to several trackers, in order."""

    def __init__(self, trackers: Sequence[Tracker]) -> None:
        self.trackers = list(trackers)

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        for tracker in self.trackers:
            tracker.log(metrics, step)

    def log_table(self, name: str, rows: Sequence[Mapping[str, Any]], step: int) -> None:
        for tracker in self.trackers:
            tracker.log_table(name, rows, step)

    def finish(self) -> None:
        for tracker in self.trackers:
            tracker.finish()


def make_tracker(
    run_dir: str | os.PathLike,
    wandb_project: str | None = None,
    wandb_mode: str | None = None,
    config_dict: Mapping[str, Any] | None = None,
    is_main_process: bool = True,
    run_name: str | None = None,
    resume: bool = False,
) -> Tracker:
    """The trainer's tracker: no-op off the main process; else JSONL, plus W&B when ``wandb_project`` is set and
    the resolved mode is not ``"disabled"`` (continuing the folder's W&B run with ``resume``)."""
    if not is_main_process:
        return NoOpTracker()
    trackers: list[Tracker] = [JsonlTracker(run_dir)]
    if wandb_project is not None and resolve_wandb_mode(wandb_mode) != "disabled":
        trackers.append(WandbTracker(wandb_project, run_dir, run_name, config_dict, wandb_mode, resume=resume))
    return MultiTracker(trackers)


def rewind_run_files(run_dir: str | os.PathLike, step: int) -> None:
    """Forget what a run logged for steps >= `step`: its metrics.jsonl lines, table rows and rollout files.

    A resumed run calls this with the step it continues from, so a step the killed process logged after its last
    checkpoint is not logged twice. Files are rewritten under a temporary name and renamed.
    """
    run_dir = Path(run_dir)
    for path in [run_dir / METRICS_FILE, *sorted((run_dir / TABLE_DIR).glob("*.jsonl"))]:
        if not path.is_file():
            continue
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = [line for line in lines if line.strip() and json.loads(line).get("step", -1) < step]
        if len(kept) != len(lines):
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text("".join(kept), encoding="utf-8")
            os.replace(tmp, path)
    for path in (run_dir / ROLLOUT_DIR).glob("step_*.parquet"):
        if int(path.stem.removeprefix("step_")) >= step:
            path.unlink()


def reduce_metrics(metrics: Mapping[str, float | torch.Tensor]) -> dict[str, float]:
    """Mean of each metric across ranks (one all_reduce) when torch.distributed is initialised; else floats as is.

    Every rank must pass the same keys. A NaN on any rank makes that metric NaN: nothing is hidden.
    """
    keys = sorted(metrics)
    values = [_float(metrics[k]) for k in keys]
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or not keys:
        return dict(zip(keys, values, strict=True))
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    buf = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    buf /= dist.get_world_size()
    return dict(zip(keys, buf.tolist(), strict=True))


def save_rollouts(run_dir: str | os.PathLike, step: int, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write one step's completions to ``run_dir/rollouts/step_{step:06d}.parquet`` atomically.

    rows: one mapping per completion, all with the same keys, including ``prompt``, ``completion``,
    ``advantage`` and ``group_id``; per-reward scores (e.g. ``reward/unit_tests``) and per-test verdicts are
    extra keys. Lists/dicts (verdicts) are stored as JSON strings, so every step has the same column types;
    read them back with ``json.loads``. A ``step`` column is added. The file is written under a temporary name
    and renamed, so readers never see a partial file. Returns the path.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not rows:
        raise ValueError(f"save_rollouts(step={step}): no rows to save")
    keys = set(rows[0])
    missing = [k for k in ROLLOUT_REQUIRED if k not in keys]
    if missing:
        raise ValueError(f"rollout rows lack {missing}; each row needs {ROLLOUT_REQUIRED}")
    if "step" in keys:
        raise ValueError("rollout rows must not carry 'step': save_rollouts adds it")
    for i, row in enumerate(rows):
        if set(row) != keys:
            raise ValueError(
                f"rollout row {i} has keys {sorted(row)}, row 0 has {sorted(keys)}: give every row the same"
            )
    records = [{"step": int(step), **{k: _cell(v) for k, v in row.items()}} for row in rows]
    out_dir = Path(run_dir) / ROLLOUT_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"step_{step:06d}.parquet"
    tmp = out_dir / f".{path.name}.tmp"  # not *.parquet, so globbing readers skip it
    try:
        pq.write_table(pa.Table.from_pylist(records), tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def load_rollouts(run_dir: str | os.PathLike, cache_dir: str | None = None):
    """All saved steps of a run as one ``datasets.Dataset`` (rows ordered by step), via the parquet builder."""
    import datasets

    files = sorted((Path(run_dir) / ROLLOUT_DIR).glob("step_*.parquet"))
    if not files:
        raise FileNotFoundError(f"no rollouts under {Path(run_dir) / ROLLOUT_DIR}: save_rollouts writes them")
    return datasets.load_dataset("parquet", data_files=[str(f) for f in files], split="train", cache_dir=cache_dir)
