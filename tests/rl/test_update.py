"""Phase 5 under data parallelism: two ranks with unequal signal give the one-process gradient on the union batch.
Opt-in: pytest -m slow (two fresh interpreters under torchrun, ~1 min on 2 cores)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlwork.runtime import dist

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_two_ranks_with_unequal_signal_match_one_process_on_the_union_batch(tmp_path, stage):
    out = tmp_path / "result.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(dist._free_port()), str(ROOT / "tests" / "scripts" / "unequal_signal.py"), str(stage), str(out)]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(out.read_text())
    assert set(report) == {f"{loss}/{pattern}" for loss in ("grpo", "dr_grpo", "dapo")
                           for pattern in ("rank1_without_signal", "unequal")}
    for case, r in report.items():
        assert r["max_abs_grad"] > 1e-4, (case, r)  # the gradient is not trivially zero
        assert r["max_abs_diff"] < 1e-5, (case, r)
        # the logged metrics are the global ones too, on every rank
        for key in ("loss", "kl", "ratio_max"):
            assert r[key] == pytest.approx(r[f"single_{key}"], rel=1e-5, abs=1e-7), (case, key, r)
