"""curves.png for any run, RL or SFT, from its metrics.jsonl; several runs side by side (`rlwork plot`), no W&B needed.

Panels, the first four that have data in some run: training reward (mean), pass rate (all tests passed, with the
in-training `eval/pass@k` as markers), KL to the reference, loss, learning rate, gradient norm. An RL run gets reward,
pass rate, KL and loss; an SFT run loss, learning rate and gradient norm. Runs share each panel, one colour per run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from rlwork.runtime.tracking import METRICS_FILE

CURVES = "curves.png"
PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("training reward (mean)", ("reward/mean",)),
    ("pass rate (all tests)", ("sandbox/passed_frac",)),
    ("KL to the reference", ("policy/kl",)),
    ("loss", ("policy/loss", "sft/loss")),
    ("learning rate", ("optim/lr",)),
    ("gradient norm", ("optim/grad_norm",)),
)
"""Title -> metric keys drawn as lines (the first key a run logged)."""


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """The rows of a run's metrics.jsonl (a ValueError naming the folder when it has none)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise ValueError(f"{run_dir} has no {METRICS_FILE}: pass a run folder (output_dir of rlwork train or sft)")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"{path} is empty: the run logged no step yet")
    return rows


def choose_panels(runs: Sequence[list[dict]]) -> list[tuple[str, tuple[str, ...]]]:
    """The first four of `PANELS` that some run has values for."""
    return [(t, keys) for t, keys in PANELS if any(_series(rows, k)[0] for rows in runs for k in keys)][:4]


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) where the run logged a value; the pass rate only where a program ran (a reward without tests
    logs sandbox/passed_frac 0 and sandbox/tests_passed_frac null)."""
    needs_program = key == "sandbox/passed_frac"
    points = [(r["step"], r[key]) for r in rows if r.get(key) is not None
              and not (needs_program and r.get("sandbox/tests_passed_frac") is None)]
    return [p[0] for p in points], [p[1] for p in points]


def _labels(run_dirs: Sequence[Path]) -> list[str]:
    names = [p.resolve().name for p in run_dirs]
    return names if len(set(names)) == len(names) else [str(p) for p in run_dirs]


def plot_runs(run_dirs: Sequence[str | os.PathLike], out: str | os.PathLike, title: str | None = None) -> Path:
    """Draw the runs' curves into one PNG at `out` (see the module docstring); returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    run_dirs = [Path(r) for r in run_dirs]
    if not run_dirs:
        raise ValueError("no run to plot: pass at least one run folder")
    runs = [read_metrics(r) for r in run_dirs]
    panels = choose_panels(runs)
    cols = min(2, len(panels))
    fig, axes = plt.subplots((len(panels) + 1) // 2, cols, figsize=(6 * cols, 3.5 * ((len(panels) + 1) // 2)),
                             squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    first, last = min(r["step"] for rows in runs for r in rows), max(r["step"] for rows in runs for r in rows)
    pad = max(0.5, 0.02 * (last - first))  # every panel spans all steps, also with one point in it
    for i, (panel_title, keys) in enumerate(panels):
        ax = axes[i // cols][i % cols]
        for j, (label, rows) in enumerate(zip(_labels(run_dirs), runs, strict=True)):
            colour = colours[j % len(colours)]
            key = next((k for k in keys if _series(rows, k)[0]), None)
            if key is not None:
                steps, values = _series(rows, key)
                ax.plot(steps, values, color=colour, label=label, marker="." if len(steps) < 30 else None)
            if keys == ("sandbox/passed_frac",):
                for n, k in enumerate(sorted({k for r in rows for k in r if k.startswith("eval/pass@")})):
                    ax.plot(*_series(rows, k), color=colour, marker="os^v"[n % 4], linestyle=":",
                            label=f"{label} {k} (held out)")
        ax.set_title(panel_title)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlim(first - pad, last + pad)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    for i in range(len(panels), axes.size):
        axes[i // cols][i % cols].axis("off")
    fig.suptitle(title or ", ".join(_labels(run_dirs)))
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_run(run_dir: str | os.PathLike) -> Path:
    """`run_dir/curves.png` of one run; the trainers call it when they finish."""
    return plot_runs([run_dir], Path(run_dir) / CURVES)
