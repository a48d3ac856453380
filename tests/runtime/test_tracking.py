import json
import math
import os
from pathlib import Path

import pytest
import torch

from rlwork.runtime.tracking import (
    JsonlTracker,
    MultiTracker,
    NoOpTracker,
    Tracker,
    WandbTracker,
    load_rollouts,
    make_tracker,
    reduce_metrics,
    resolve_wandb_mode,
    save_rollouts,
)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_jsonl_tracker_writes_one_flat_dict_per_step(tmp_path):
    tracker = JsonlTracker(tmp_path)
    tracker.log({"reward/mean": 0.5, "policy/kl": torch.tensor(0.25), "perf/n": 3}, step=1)
    tracker.log({"reward/mean": float("nan"), "loss": torch.tensor(float("inf"))}, step=2)
    tracker.log_table("completions", [{"prompt": "p", "verdicts": [{"ok": True}]}], step=2)
    tracker.finish()
    assert read_jsonl(tmp_path / "metrics.jsonl") == [
        {"step": 1, "reward/mean": 0.5, "policy/kl": 0.25, "perf/n": 3.0},
        {"step": 2, "reward/mean": None, "loss": None},  # non-finite -> null
    ]
    assert read_jsonl(tmp_path / "tables" / "completions.jsonl") == [
        {"step": 2, "prompt": "p", "verdicts": [{"ok": True}]}
    ]


def test_jsonl_tracker_appends_on_resume(tmp_path):
    first = JsonlTracker(tmp_path)
    first.log({"a": 1.0}, step=1)
    first.finish()
    second = JsonlTracker(tmp_path)
    second.log({"a": 2.0}, step=2)
    second.finish()
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2]


def test_resolve_wandb_mode():
    assert resolve_wandb_mode(None, {}) == "offline"  # default: nothing configured
    assert resolve_wandb_mode(None, {"WANDB_API_KEY": "x"}) == "online"
    assert resolve_wandb_mode(None, {"WANDB_API_KEY": "x", "WANDB_MODE": "offline"}) == "offline"
    assert resolve_wandb_mode(None, {"WANDB_MODE": "disabled"}) == "disabled"
    assert resolve_wandb_mode("offline", {"WANDB_MODE": "online"}) == "offline"  # explicit argument wins
    with pytest.raises(ValueError, match="wandb_mode"):
        resolve_wandb_mode("dryrun", {})


def test_noop_and_multi_tracker(tmp_path):
    class Recorder:
        def __init__(self):
            self.calls = []

        def log(self, metrics, step):
            self.calls.append(("log", dict(metrics), step))

        def log_table(self, name, rows, step):
            self.calls.append(("table", name, step))

        def finish(self):
            self.calls.append(("finish",))

    a, b = Recorder(), Recorder()
    multi = MultiTracker([a, b, NoOpTracker()])
    multi.log({"x": 1.0}, 3)
    multi.log_table("t", [{"c": 1}], 3)
    multi.finish()
    assert a.calls == b.calls == [("log", {"x": 1.0}, 3), ("table", "t", 3), ("finish",)]
    for tracker in (a, multi, NoOpTracker(), JsonlTracker(tmp_path)):
        assert isinstance(tracker, Tracker)


def test_make_tracker_is_noop_off_main_process(tmp_path):
    tracker = make_tracker(tmp_path / "run", wandb_project="p", wandb_mode="offline", is_main_process=False)
    assert isinstance(tracker, NoOpTracker)
    tracker.log({"a": 1.0}, 1)
    tracker.log_table("t", [{"a": 1}], 1)
    tracker.finish()
    assert not (tmp_path / "run").exists()


def test_make_tracker_without_wandb_writes_jsonl_only(tmp_path):
    tracker = make_tracker(tmp_path, wandb_project=None)
    tracker.log({"a": 1.0}, 1)
    tracker.finish()
    assert read_jsonl(tmp_path / "metrics.jsonl") == [{"step": 1, "a": 1.0}]
    assert not (tmp_path / "wandb").exists()
    tracker = make_tracker(tmp_path / "d", wandb_project="p", wandb_mode="disabled")
    tracker.finish()
    assert not (tmp_path / "d" / "wandb").exists()


def test_wandb_offline_run_folder_and_table(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    tracker = make_tracker(tmp_path, wandb_project="rlwork-test", config_dict={"algo": {"beta": 0.01}})
    wandb_trackers = [t for t in tracker.trackers if isinstance(t, WandbTracker)]
    assert len(wandb_trackers) == 1 and wandb_trackers[0].run.settings.mode == "offline"
    tracker.log({"reward/mean": 0.5}, step=1)
    rows = [
        {"prompt": "add", "completion": "def f(): ...", "reward/unit_tests": 1.0, "verdicts": [{"test": 0, "ok": 1}]},
        {"prompt": "add", "completion": "oops", "reward/unit_tests": 0.0, "verdicts": []},
    ]
    tracker.log_table("completions", rows, step=1)
    tracker.finish()
    run_dirs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(run_dirs) == 1
    tables = list((run_dirs[0] / "files" / "media" / "table").glob("completions_1_*.table.json"))
    assert len(tables) == 1
    table = json.loads(tables[0].read_text())
    assert table["columns"] == ["completion", "prompt", "reward/unit_tests", "verdicts"]
    assert table["data"][0] == ["def f(): ...", "add", 1.0, '[{"ok": 1, "test": 0}]']
    assert table["data"][1][3] == "[]"
    assert read_jsonl(tmp_path / "metrics.jsonl") == [{"step": 1, "reward/mean": 0.5}]


# ---------------------------------------------------------------- rollout store


def rollout_rows(n, base=0.0):
    return [
        {
            "prompt": f"p{i // 2}",
            "completion": f"c{i}",
            "reward/unit_tests": base + i,
            "reward/format": float("nan") if i == 0 else 0.5,
            "verdicts": [{"test": j, "passed": j < i} for j in range(2)],
            "advantage": (-1.0) ** i,
            "group_id": i // 2,
        }
        for i in range(n)
    ]


def test_rollouts_round_trip_through_datasets(tmp_path):
    path = save_rollouts(tmp_path, 7, rollout_rows(4))
    save_rollouts(tmp_path, 12, rollout_rows(2, base=10.0))
    assert path == tmp_path / "rollouts" / "step_000007.parquet"
    assert sorted(p.name for p in (tmp_path / "rollouts").iterdir()) == ["step_000007.parquet", "step_000012.parquet"]

    import datasets

    direct = datasets.load_dataset("parquet", data_files=str(path), split="train", cache_dir=str(tmp_path / "c1"))
    assert len(direct) == 4

    ds = load_rollouts(tmp_path, cache_dir=str(tmp_path / "cache"))
    assert len(ds) == 6
    assert ds["step"] == [7, 7, 7, 7, 12, 12]
    assert ds["group_id"] == [0, 0, 1, 1, 0, 0]
    assert ds["advantage"] == [1.0, -1.0, 1.0, -1.0, 1.0, -1.0]
    assert ds["reward/unit_tests"] == [0.0, 1.0, 2.0, 3.0, 10.0, 11.0]
    assert math.isnan(ds["reward/format"][0]) and ds["reward/format"][1] == 0.5
    assert json.loads(ds["verdicts"][3]) == [{"passed": True, "test": 0}, {"passed": True, "test": 1}]
    assert ds[1]["prompt"] == "p0" and ds[1]["completion"] == "c1"


def test_save_rollouts_is_atomic_and_overwrites(tmp_path, monkeypatch):
    save_rollouts(tmp_path, 1, rollout_rows(2))
    import pyarrow.parquet as pq

    def crash(table, where):
        Path(where).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", crash)
    with pytest.raises(OSError):
        save_rollouts(tmp_path, 1, rollout_rows(4))
    monkeypatch.undo()
    # the old file is intact and no partial file matches the glob readers use
    assert pq.read_table(tmp_path / "rollouts" / "step_000001.parquet").num_rows == 2
    assert [p.name for p in (tmp_path / "rollouts").iterdir()] == ["step_000001.parquet"]  # temp file removed
    save_rollouts(tmp_path, 1, rollout_rows(4))
    assert pq.read_table(tmp_path / "rollouts" / "step_000001.parquet").num_rows == 4


def test_save_rollouts_validation(tmp_path):
    with pytest.raises(ValueError, match="no rows"):
        save_rollouts(tmp_path, 1, [])
    with pytest.raises(ValueError, match="advantage"):
        save_rollouts(tmp_path, 1, [{"prompt": "p", "completion": "c", "group_id": 0}])
    rows = rollout_rows(2)
    del rows[1]["verdicts"]
    with pytest.raises(ValueError, match="same"):
        save_rollouts(tmp_path, 1, rows)
    with pytest.raises(FileNotFoundError):
        load_rollouts(tmp_path / "empty")


# ---------------------------------------------------------------- reduce_metrics


def test_reduce_metrics_identity_in_one_process():
    # Other tests may leave a 1-rank process group behind; one process is the identity either way.
    assert not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1
    out = reduce_metrics({"b": torch.tensor(2.5), "a": 1})
    assert out == {"a": 1.0, "b": 2.5}
    assert all(type(v) is float for v in out.values())


def _reduce_worker(rank, world_size, init_file, out_dir):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        out = reduce_metrics({"x": float(rank), "y": torch.tensor(10.0 * (rank + 1))})
        with open(os.path.join(out_dir, f"{rank}.json"), "w") as f:
            json.dump(out, f)
    finally:
        torch.distributed.destroy_process_group()


def test_reduce_metrics_mean_across_two_ranks(tmp_path):
    torch.multiprocessing.spawn(_reduce_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    for rank in (0, 1):
        assert json.loads((tmp_path / f"{rank}.json").read_text()) == {"x": 0.5, "y": 15.0}


def test_rewind_run_files_forgets_the_steps_that_run_again(tmp_path):
    from rlwork.runtime.tracking import rewind_run_files

    tracker = JsonlTracker(tmp_path)
    for step in range(4):
        tracker.log({"a": float(step)}, step)
        tracker.log_table("completions", [{"c": step}], step)
        save_rollouts(tmp_path, step, rollout_rows(2))
    tracker.finish()
    rewind_run_files(tmp_path, 2)
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [0, 1]
    assert [r["step"] for r in read_jsonl(tmp_path / "tables" / "completions.jsonl")] == [0, 1]
    assert sorted(p.name for p in (tmp_path / "rollouts").iterdir()) == ["step_000000.parquet", "step_000001.parquet"]
