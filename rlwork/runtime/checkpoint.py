"""Atomic checkpoints, resume, and export of the merged Instruct model.

Layout of a run folder:
```
<run_dir>/checkpoints/
  step_000010/
    adapter/           peft `save_pretrained` (LoRA only; loads with PeftModel.from_pretrained)
    model/             full fine-tuning only: HF `save_pretrained` of the whole model
    engine/            optimizer + trainable weights (DeepSpeed `save_checkpoint`, or torch's engine.pt)
    rng/rank_<r>.pt    python/numpy/torch CPU+CUDA global states and the caller's named torch.Generators
    data_state.json    the data position (whatever dict the caller passes)
    config.yaml        the resolved run config
    meta.json          step, backend, world size; written last
  latest               name of the newest complete checkpoint
```
A checkpoint is written into `.tmp-<step>` and becomes visible only by `rename` after every file was fsynced, so
a process killed mid-save leaves a `.tmp-*` folder that is never loaded (and is cleared by the next save). The
`latest` pointer is replaced atomically too; if it is missing or stale, the newest complete `step_*` is used.
All ranks must call `save_checkpoint`/`load_checkpoint` (DeepSpeed's engine state is per rank); the run folder
must be on a file system every rank sees.

Why not accelerate's `save_state`/`load_state`: they write into the target folder in place (a process killed
mid-save leaves a half-written checkpoint that `load_state` then reads), keep no `latest` pointer, save the global
RNGs but not the caller's named `torch.Generator`s, check neither backend nor world size on load, and need the
model and optimizer prepared by an `Accelerator`, which our torch/DeepSpeed engine does not use. The peft adapter is
still saved with peft's own `save_pretrained`, and DeepSpeed's state with DeepSpeed's `save_checkpoint`.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlwork.runtime import dist
from rlwork.runtime import engine as eng

CHECKPOINTS = "checkpoints"
LATEST = "latest"


def _ckpt_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINTS


def _step_name(step: int) -> str:
    return f"step_{step:06d}"


# ---------------------------------------------------------------------------------------------------------------
# RNG states


def capture_rng_states(generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Global RNG states (python, numpy, torch CPU, every CUDA device) and the named generators' states."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "generators": {name: gen.get_state() for name, gen in (generators or {}).items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_states(state: dict[str, Any], generators: dict[str, torch.Generator] | None = None) -> None:
    """Inverse of `capture_rng_states`; each generator in `generators` must have a saved state of that name."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, gen in (generators or {}).items():
        if name not in state["generators"]:
            raise ValueError(f"no saved state for generator '{name}': saved ones are {sorted(state['generators'])}")
        gen.set_state(state["generators"][name])


# ---------------------------------------------------------------------------------------------------------------
# Save


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
    for path in [*(p for p in root.rglob("*") if p.is_dir()), root, root.parent]:
        _fsync_dir(path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _save_weights(engine: eng.TrainEngine, directory: Path) -> None:
    """Adapter (LoRA) or whole model (full FT) in HF format; ZeRO-3 parameters are gathered on every rank first."""
    params = engine.trainable_parameters() if eng.is_peft(engine.model) else list(engine.model.parameters())
    with _gathered(engine, params):
        if dist.is_main_process():
            name = "adapter" if eng.is_peft(engine.model) else "model"
            engine.model.save_pretrained(directory / name)


def _gathered(engine: eng.TrainEngine, params: list[torch.nn.Parameter]):
    if engine.backend == "deepspeed" and engine.zero_stage >= 3:
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=None)
    import contextlib

    return contextlib.nullcontext()


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    engine: eng.TrainEngine,
    rng_states: dict[str, torch.Generator] | None,
    data_state: dict,
    config_dict: dict,
    *,
    keep_last: int = 3,
) -> Path:
    """Write checkpoint `step` atomically and keep the newest `keep_last` (0 = keep all). Returns its folder.

    rng_states: the caller's named generators (sampling, masking, data order); global RNGs are always saved.
    data_state: JSON-serialisable data position. config_dict: the resolved config, saved as YAML.
    """
    import yaml

    if keep_last < 0:
        raise ValueError(f"keep_last={keep_last}: use 0 to keep every checkpoint, or a positive count")
    engine.require_window_start("save")
    root = _ckpt_root(run_dir)
    tmp = root / f".tmp-{step}"
    final = root / _step_name(step)
    if dist.is_main_process():
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp-*"):  # left by a killed save; never loaded
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
    dist.barrier()
    engine.save_state(tmp / "engine")
    (tmp / "rng").mkdir(exist_ok=True)
    torch.save(capture_rng_states(rng_states), tmp / "rng" / f"rank_{dist.rank()}.pt")
    _save_weights(engine, tmp)
    dist.barrier()
    if dist.is_main_process():
        (tmp / "data_state.json").write_text(json.dumps(data_state, indent=2, sort_keys=True))
        (tmp / "config.yaml").write_text(yaml.safe_dump(config_dict, sort_keys=False))
        meta = {"step": step, "backend": engine.backend, "zero_stage": engine.zero_stage,
                "world_size": dist.world_size(), "peft": eng.is_peft(engine.model)}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        _fsync_tree(tmp)
        if final.exists():  # re-saving a step (e.g. after resuming from it): replace the old copy
            old = root / f".tmp-old-{step}"
            final.rename(old)
            shutil.rmtree(old)
        tmp.rename(final)
        _fsync_dir(root)
        _write_atomic(root / LATEST, final.name + "\n")
        if keep_last:
            for old in _complete_checkpoints(root)[:-keep_last]:
                shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


# ---------------------------------------------------------------------------------------------------------------
# Load


def _complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first. `.tmp-*` folders are never complete."""
    found = [p for p in root.glob("step_*") if p.is_dir() and (p / "meta.json").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("_")[1]))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder of `run_dir` (or None). Reads `latest`; falls back to a scan."""
    root = _ckpt_root(run_dir)
    pointer = root / LATEST
    if pointer.is_file():
        candidate = root / pointer.read_text().strip()
        if candidate.name.startswith("step_") and (candidate / "meta.json").is_file():
            return candidate
    complete = _complete_checkpoints(root) if root.is_dir() else []
    return complete[-1] if complete else None


def load_checkpoint(
    run_dir: str | Path,
    engine: eng.TrainEngine,
    generators: dict[str, torch.Generator] | None = None,
) -> tuple[int, dict[str, torch.Tensor], dict]:
    """Restore the newest checkpoint of `run_dir` into `engine` (weights + optimizer) and the RNGs.

    Global RNGs are restored, and so is each generator in `generators`. Returns (step, the saved named generator
    states, data_state). Raises ValueError when there is none or it was written by a different setup.
    """
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise ValueError(f"no complete checkpoint under {_ckpt_root(run_dir)}: start without resume")
    meta = json.loads((ckpt / "meta.json").read_text())
    if meta["backend"] != engine.backend:
        raise ValueError(f"{ckpt} was written by the {meta['backend']} backend; resume with the same backend")
    if meta["world_size"] != dist.world_size():
        raise ValueError(f"{ckpt} was written by {meta['world_size']} ranks, this run has {dist.world_size()}: "
                         "resume with the same number of processes")
    engine.load_state(ckpt / "engine")
    rng = torch.load(ckpt / "rng" / f"rank_{dist.rank()}.pt", map_location="cpu", weights_only=False)
    restore_rng_states(rng, generators)
    data_state = json.loads((ckpt / "data_state.json").read_text())
    return meta["step"], rng["generators"], data_state


# ---------------------------------------------------------------------------------------------------------------
# Export


def export_merged(
    checkpoint_or_run_dir: str | Path,
    base_path: str | Path,
    out_dir: str | Path,
    trust_remote_code: bool = False,
    auto_class: str = "AutoModelForCausalLM",
) -> Path:
    """Write an HF checkpoint of base + adapter merged (`merge_and_unload`) to `out_dir` (atomically).

    Loads with `<auto_class>.from_pretrained(out_dir, trust_remote_code=...)` (the family's class: AutoModel for
    LLaDA, Dream, DiffuCoder): safetensors weights in the base's dtype, the base's tokenizer and, for remote-code
    models, the base folder's modelling `.py` files next to a config whose `auto_map` is kept. A full fine-tuning
    checkpoint's `model/` folder is exported the same way.
    """
    import transformers
    from peft import PeftModel
    from transformers import AutoTokenizer

    source = Path(checkpoint_or_run_dir)
    ckpt = source if (source / "meta.json").is_file() else latest_checkpoint(source)
    if ckpt is None:
        raise ValueError(f"{source} is neither a checkpoint folder nor a run folder with a complete checkpoint")
    base_path, out_dir = Path(base_path), Path(out_dir)
    if not (base_path / "config.json").is_file():
        raise ValueError(f"base_path={base_path}: expected a local HF checkpoint folder (with config.json)")
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if (ckpt / "adapter").is_dir():
        auto = getattr(transformers, auto_class)
        base = auto.from_pretrained(base_path, trust_remote_code=trust_remote_code, dtype="auto")
        merged = PeftModel.from_pretrained(base, ckpt / "adapter").merge_and_unload()
        merged.save_pretrained(tmp)
    elif (ckpt / "model").is_dir():
        shutil.copytree(ckpt / "model", tmp)
    else:
        raise ValueError(f"{ckpt} holds neither adapter/ nor model/: not an rlwork checkpoint")
    AutoTokenizer.from_pretrained(base_path, trust_remote_code=trust_remote_code).save_pretrained(tmp)
    if trust_remote_code:
        for py in base_path.glob("*.py"):
            shutil.copy2(py, tmp / py.name)
        _keep_auto_map(base_path / "config.json", tmp / "config.json")
    _fsync_tree(tmp)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir


def _keep_auto_map(base_config: Path, out_config: Path) -> None:
    base_cfg = json.loads(base_config.read_text())
    if "auto_map" not in base_cfg:
        return
    out_cfg = json.loads(out_config.read_text())
    if out_cfg.get("auto_map") != base_cfg["auto_map"]:
        out_cfg["auto_map"] = base_cfg["auto_map"]
        out_config.write_text(json.dumps(out_cfg, indent=2, sort_keys=True) + "\n")
