"""curves.png for RL and SFT runs, and several runs in one figure (`rlwork plot`)."""

import json

import pytest

from rlwork.runtime.plots import choose_panels, plot_runs, read_metrics

PNG = b"\x89PNG\r\n\x1a\n"


def write_run(folder, rows):
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


RL_ROWS = [{"step": i, "reward/mean": 0.1 * i, "sandbox/passed_frac": 0.1 * i, "sandbox/tests_passed_frac": 0.2,
            "policy/kl": None if i == 0 else 0.01,
            "policy/loss": 0.5, "optim/lr": 1e-3, **({"eval/pass@1": 0.2} if i == 2 else {})} for i in range(3)]
SFT_ROWS = [{"step": i, "sft/loss": 2.0 - i, "optim/lr": 1e-3, "optim/grad_norm": 1.0} for i in range(3)]


def test_panels_follow_what_the_runs_logged():
    titles = [t for t, _ in choose_panels([RL_ROWS])]
    assert titles == ["training reward (mean)", "pass rate (all tests)", "KL to the reference", "loss"]
    assert [t for t, _ in choose_panels([SFT_ROWS])] == ["loss", "learning rate", "gradient norm"]
    no_tests = [{**r, "sandbox/tests_passed_frac": None} for r in RL_ROWS]  # a reward that runs no program
    assert "pass rate (all tests)" not in [t for t, _ in choose_panels([no_tests])]


def test_one_and_several_runs_make_a_png(tmp_path):
    rl, sft = write_run(tmp_path / "rl", RL_ROWS), write_run(tmp_path / "sft", SFT_ROWS)
    assert plot_runs([rl], rl / "curves.png").read_bytes()[:8] == PNG
    assert plot_runs([rl, sft], tmp_path / "both.png").read_bytes()[:8] == PNG
    with pytest.raises(ValueError, match="has no metrics.jsonl"):
        read_metrics(tmp_path)


def test_rlwork_plot_command(tmp_path, capsys):
    from rlwork.cli import main

    a, b = write_run(tmp_path / "a", RL_ROWS), write_run(tmp_path / "b", RL_ROWS[:2])
    assert main(["plot", str(a)]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == {"plot": str(a / "curves.png")}
    assert main(["plot", str(a), str(b), "--out", str(tmp_path / "ab.png")]) == 0
    assert (tmp_path / "ab.png").read_bytes()[:8] == PNG
    assert main(["plot", str(tmp_path / "nothing")]) == 2
