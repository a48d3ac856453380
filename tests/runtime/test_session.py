"""The run folder a session claims: a new run refuses another run's folder; --overwrite removes only run files."""

import pytest

from rlwork.runtime.session import RUN_FILES, claim_run_dir, used_by_a_run


def test_an_empty_or_unused_folder_is_claimed_as_it_is(tmp_path):
    claim_run_dir(tmp_path / "new", resume=False, overwrite=False)
    (tmp_path / "crashed").mkdir()
    (tmp_path / "crashed" / "metrics.jsonl").write_text("")  # a run that failed before its first step
    claim_run_dir(tmp_path / "crashed", resume=False, overwrite=False)


def test_a_used_folder_is_refused_unless_resumed_or_overwritten(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints" / "step_000001").mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 0}\n')
    (run / "my_notes.md").write_text("keep me")
    (run / "eval_my_own.json").write_text("{}")  # not a name rlwork writes
    (run / "eval_after_heldout.json").write_text("{}")  # the demo's report of a further split
    assert used_by_a_run(run) == ["metrics.jsonl", "checkpoints/"]
    with pytest.raises(ValueError, match="output_dir=.*already holds a run"):
        claim_run_dir(run, resume=False, overwrite=False)
    claim_run_dir(run, resume=True, overwrite=False)
    assert (run / "metrics.jsonl").exists()
    with pytest.raises(ValueError, match="choose one"):
        claim_run_dir(run, resume=True, overwrite=True)
    claim_run_dir(run, resume=False, overwrite=True)
    assert sorted(p.name for p in run.iterdir()) == ["eval_my_own.json", "my_notes.md"]
    assert "metrics.jsonl" in RUN_FILES and "checkpoints" in RUN_FILES
