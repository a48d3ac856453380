"""A run killed with SIGKILL mid-step and resumed logs the same next-step metrics as an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REWARD = (
    "def varied(prompts, completions, **c):\n"
    "    return [sum(ch.isalpha() for ch in t) / max(len(t), 1) for t in completions]\n"
)


def _cmd(out: Path, resume: bool = False) -> list[str]:
    args = [sys.executable, "-m", "rlwork.cli", "train", f"output_dir={out}", "train.steps=3", "train.save_every=1",
            "train.prompts_per_step=2", "algo.num_generations=4", "sampler.max_new_tokens=8",
            "data.synthetic_train=8", "data.synthetic_heldout=4", "tracking.wandb=false",
            "rewards.functions=[my_rewards:varied]", "rewards.weights=[1.0]", "train.micro_batch_size=4",
            "algo.dynamic_sampling=keep", "train.learning_rate=0.01"]
    return [*args, "--resume"] if resume else args


def _step_metrics(out: Path, step: int) -> dict:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if r["step"] == step][-1]  # a step logged before the kill is logged again on resume
    return {k: v for k, v in last.items() if not k.startswith("perf/")}


def test_sigkill_mid_step_then_resume_matches_uninterrupted(tmp_path):
    (tmp_path / "my_rewards.py").write_text(REWARD)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)]), "OMP_NUM_THREADS": "1"}
    full, killed = tmp_path / "full", tmp_path / "killed"
    done = subprocess.run(_cmd(full), env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]

    proc = subprocess.Popen(_cmd(killed), env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "step_000002" / "meta.json").exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended before its second checkpoint"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # the third step (index 2) has just begun
    proc.wait()
    assert not (killed / "checkpoints" / "step_000003").exists()

    done = subprocess.run(_cmd(killed, resume=True), env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert _step_metrics(killed, 2) == _step_metrics(full, 2)
    assert (killed / "checkpoints" / "step_000003" / "meta.json").exists()
