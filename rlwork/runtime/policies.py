"""Loading policies: a base model, base + a run's weights, or a run folder used as the starting model.

`model.path` can name an rlwork run or checkpoint folder (an SFT warm start, an RL run) as well as an HF
checkpoint: the run's base is the model its saved `config.yaml` names (recursively, so RL on SFT on a base
works), and the run's weights are merged into it, so the result is an ordinary model that a new run adapts and
whose adapter-disabled self is the reference policy. Nothing has to be exported first.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from pathlib import Path

import torch

from rlwork.config import ModelConfig
from rlwork.config.typed import ConfigError, build, read_yaml
from rlwork.models.export_code import add_diffusion_generate
from rlwork.models.lm import (
    DTYPES,
    DiffusionLM,
    attention_kwargs,
    get_family,
    load_diffusion_lm,
    resolve_family,
    set_flush_denormal,
)
from rlwork.models.tiny import TINY_VARIANTS, ensure_tiny_coder
from rlwork.runtime.checkpoint import export_merged, latest_checkpoint

logger = logging.getLogger(__name__)

class CheckpointError(ValueError):
    """A path named as a checkpoint is not one, or the checkpoint was trained from other starting weights; the
    message says what to pass instead. The rlwork commands print it without a traceback."""


MAX_RUN_CHAIN = 16
"""A run whose base is a run whose base is ... stops here (a loop of runs naming each other)."""


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint folder (with meta.json), the newest complete checkpoint of a run folder, or a bare adapter
    folder (with adapter_config.json, as peft's `save_pretrained` writes it)."""
    path = Path(path)
    found = path if (path / "adapter_config.json").is_file() else run_checkpoint(path)
    if found is None:
        raise CheckpointError(f"checkpoint={str(path)!r} is neither a checkpoint folder (with meta.json), a run "
                              "folder with a complete checkpoint under checkpoints/, nor a peft adapter folder")
    return found


def run_checkpoint(path: str | os.PathLike) -> Path | None:
    """The rlwork checkpoint that `path` names as a starting model, or None when it is not an rlwork run.

    A checkpoint folder (meta.json) or a run folder with checkpoints/ counts; an HF folder (config.json) never does.
    A run folder whose checkpoints are all incomplete raises: starting from the base instead would be wrong.
    """
    path = Path(path)
    if (path / "config.json").is_file() or not path.is_dir():
        return None
    if (path / "meta.json").is_file():
        return path
    if (path / "checkpoints").is_dir():
        latest = latest_checkpoint(path)
        if latest is None:
            raise CheckpointError(f"{str(path)!r} is an rlwork run folder without a complete checkpoint: let it save "
                                  "one (sft.save_every / train.save_every), or name a checkpoint or HF model folder")
        return latest
    return None


def pin_model_path(model_cfg: ModelConfig) -> ModelConfig:
    """`model_cfg` with `path` naming the exact weights it names now: a run folder becomes its newest checkpoint
    folder, any local folder its absolute path. A run's saved config then names the same weights from any working
    directory, even after the run it started from trained on. Tiny variants and hub names stay as they are."""
    path = model_cfg.path
    if path in TINY_VARIANTS:
        return model_cfg
    ckpt = run_checkpoint(path)
    if ckpt is not None:
        return dataclasses.replace(model_cfg, path=str(ckpt.resolve()))
    if Path(path).exists():
        return dataclasses.replace(model_cfg, path=str(Path(path).resolve()))
    return model_cfg


def check_started_from(ckpt: Path, model_cfg: ModelConfig) -> None:
    """Raise when checkpoint `ckpt` was trained on other starting weights than `model_cfg` names: an adapter on
    the wrong base gives wrong numbers without any error. Checkpoints without a saved model.path pass."""
    saved = read_yaml(ckpt / "config.yaml").get("model") if (ckpt / "config.yaml").is_file() else None
    if not isinstance(saved, dict) or "path" not in saved:
        return
    started = pin_model_path(dataclasses.replace(model_cfg, path=str(saved["path"]))).path
    if started != pin_model_path(model_cfg).path:
        raise CheckpointError(f"{ckpt} was trained from model.path={saved['path']!r}, but this run names "
                         f"model.path={model_cfg.path!r}: pass model.path={saved['path']}")


def starting_model(model_cfg: ModelConfig, run_dir: str | os.PathLike, resume: bool) -> ModelConfig:
    """What a trainer starts from: `model_cfg` pinned (`pin_model_path`, so saved configs name these exact weights),
    checked against the checkpoint it resumes, if any (`check_started_from`)."""
    pinned = pin_model_path(model_cfg)
    latest = latest_checkpoint(run_dir) if resume else None
    if latest is not None:
        check_started_from(latest, pinned)
    return pinned


def saved_base(ckpt: Path, model_cfg: ModelConfig) -> ModelConfig:
    """The base model config of the run that wrote `ckpt` (its `config.yaml`), with this run's dtype, device and
    attention kernel. The family must agree: it fixes the mask/eos/pad ids both runs trained with."""
    saved = read_yaml(ckpt / "config.yaml").get("model")
    if not isinstance(saved, dict):
        raise ValueError(f"{ckpt}/config.yaml has no model section: not a checkpoint rlwork wrote")
    try:
        base = build(ModelConfig, saved, prefix="model")
    except ConfigError as err:
        raise ValueError(f"{ckpt}/config.yaml: {err}") from None
    if base.family != model_cfg.family:
        raise ValueError(f"model.path={str(ckpt)!r} was trained as model.family={base.family!r}, this run says "
                         f"{model_cfg.family!r}: set model.family={base.family}")
    block_size = model_cfg.block_size if model_cfg.block_size is not None else base.block_size
    return dataclasses.replace(base, trust_remote_code=base.trust_remote_code or model_cfg.trust_remote_code,
                               dtype=model_cfg.dtype, device=model_cfg.device,
                               attn_implementation=model_cfg.attn_implementation, block_size=block_size)


def load_model(model_cfg: ModelConfig) -> DiffusionLM:
    """The starting model that `model_cfg.path` names: an HF folder or tiny variant as is, or an rlwork run or
    checkpoint folder as its base with the run's weights merged in (LoRA merged with `merge_and_unload`, full
    weights loaded). Mode as `from_pretrained` leaves it (eval); trainers set the mode they need. Applies
    `model_cfg.flush_denormal` to the process (`models.set_flush_denormal`)."""
    set_flush_denormal(model_cfg.flush_denormal)
    return _load_chain(model_cfg, depth=0)


def _load_chain(model_cfg: ModelConfig, depth: int) -> DiffusionLM:
    ckpt = run_checkpoint(model_cfg.path) if model_cfg.path not in TINY_VARIANTS else None
    if ckpt is None:
        return load_diffusion_lm(
            model_cfg.path, model_cfg.family, trust_remote_code=model_cfg.trust_remote_code, dtype=model_cfg.dtype,
            device=model_cfg.device, attn_implementation=model_cfg.attn_implementation,
            block_size=model_cfg.block_size,
        )
    _check_depth(model_cfg.path, depth)
    base_cfg = saved_base(ckpt, model_cfg)
    return attach_checkpoint(_load_chain(base_cfg, depth + 1), ckpt, base_cfg, merge=True)


def _check_depth(path: str | os.PathLike, depth: int) -> None:
    if depth >= MAX_RUN_CHAIN:
        raise ValueError(f"model.path={str(path)!r}: more than {MAX_RUN_CHAIN} runs chained through their "
                         "config.yaml (a loop?); export one with `rlwork export` and start from that folder")


def attach_checkpoint(lm: DiffusionLM, ckpt: Path, model_cfg: ModelConfig, *, merge: bool) -> DiffusionLM:
    """`lm` with the weights of checkpoint folder `ckpt`: its `adapter/` (or a bare adapter folder) through peft,
    merged into the weights when `merge`, or its full weights in `model/`. Tokenizer and family stay lm's.
    Consumes `lm`: use the returned model only."""
    adapter = ckpt if (ckpt / "adapter_config.json").is_file() else ckpt / "adapter"
    tokenizer, family, device = lm.tokenizer, lm.family, lm.device
    if adapter.is_dir():
        from peft import PeftModel

        model = PeftModel.from_pretrained(lm.model, adapter, is_trainable=False)
        if merge:
            if lm.dtype != torch.float32:
                logger.warning("merging the LoRA adapter of %s into %s weights rounds away updates smaller than "
                               "their precision; model.dtype=float32 merges exactly", ckpt, lm.dtype)
            model = model.merge_and_unload()
    elif (ckpt / "model").is_dir():
        cls, causal = type(lm.model), getattr(lm.model.config, "is_causal", True)
        lm.model = None  # the base's weights go before the checkpoint's arrive (peak memory: one model, not two)
        model = cls.from_pretrained(ckpt / "model", dtype=DTYPES[model_cfg.dtype],
                                    **attention_kwargs(family, model_cfg.attn_implementation))
        model.config.is_causal = causal
    else:
        raise ValueError(f"{ckpt} holds neither adapter/ nor model/: not an rlwork checkpoint")
    return DiffusionLM(model.to(device), tokenizer, family)


def load_policy(model_cfg: ModelConfig, checkpoint: str | os.PathLike | None) -> DiffusionLM:
    """The starting model of `model_cfg` (checkpoint=None; see `load_model`), or it + the weights of a
    run/checkpoint folder.

    LoRA checkpoints: `PeftModel.from_pretrained` on the checkpoint's `adapter/`, so every forward of the returned
    DiffusionLM goes through the adapter. Full fine-tuning checkpoints: the weights in `model/`, loaded with the
    base's model class (the base folder keeps the modelling code). Tokenizer and family always come from the base.
    The model is in eval mode (adapter dropout off).
    """
    ckpt = None if checkpoint is None else resolve_checkpoint(checkpoint)
    if ckpt is not None:
        check_started_from(ckpt, model_cfg)
    lm = load_model(model_cfg)
    if ckpt is not None:
        lm = attach_checkpoint(lm, ckpt, model_cfg, merge=False)
    lm.model.eval()
    return lm


def export_run(source: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """`rlwork export`: the policy of a run or checkpoint folder as a standalone HF checkpoint in `out_dir`.

    The base is the model the run's config.yaml names; when that is itself a run (RL on an SFT warm start), it is
    exported first into a temporary folder beside `out_dir`, so the result holds every stage's weights merged.
    The folder's `generate` samples by block diffusion with the run's family and sampler settings
    (`models.export_code`; load it with `trust_remote_code=True`).
    """
    Path(out_dir).resolve().parent.mkdir(parents=True, exist_ok=True)
    out = _export_chain(source, Path(out_dir), depth=0)
    saved = read_yaml(run_checkpoint(source) / "config.yaml")
    model_cfg = build(ModelConfig, saved["model"], prefix="model")
    from transformers import AutoConfig, AutoTokenizer

    trust = model_cfg.trust_remote_code or any(out.glob("*.py"))  # the folder ships the base's modelling code
    family = resolve_family(get_family(model_cfg.family), AutoConfig.from_pretrained(out, trust_remote_code=trust),
                            AutoTokenizer.from_pretrained(out, trust_remote_code=trust),
                            block_size=model_cfg.block_size)
    data = saved.get("data") or {}
    prompt = {"chat": bool(data.get("chat", True)), "prompt_style": data.get("prompt_style", "instruct")}
    add_diffusion_generate(out, family, saved.get("sampler") or {}, prompt)
    return out


def _export_chain(source: str | os.PathLike, out_dir: Path, depth: int) -> Path:
    _check_depth(source, depth)
    ckpt = run_checkpoint(source)
    if ckpt is None:
        raise ValueError(f"{source} holds no complete checkpoint: pass a run folder or a checkpoint folder")
    saved = read_yaml(ckpt / "config.yaml").get("model")
    if not isinstance(saved, dict) or "path" not in saved:
        raise ValueError(f"{ckpt}/config.yaml has no model.path: not a checkpoint rlwork wrote")
    path, trust = str(saved["path"]), bool(saved.get("trust_remote_code", False))
    auto_class = get_family(str(saved.get("family", ModelConfig.family))).auto_class
    if path in TINY_VARIANTS:
        return export_merged(ckpt, ensure_tiny_coder(path), out_dir, trust_remote_code=True, auto_class=auto_class)
    if run_checkpoint(path) is None:
        return export_merged(ckpt, local_model_folder(path), out_dir, trust_remote_code=trust, auto_class=auto_class)
    with tempfile.TemporaryDirectory(dir=out_dir.resolve().parent) as tmp:
        base = _export_chain(path, Path(tmp) / "base", depth + 1)
        base_trust = trust or any(base.glob("*.py"))  # the chain's root shipped its modelling code
        return export_merged(ckpt, base, out_dir, trust_remote_code=base_trust, auto_class=auto_class)


def local_model_folder(path: str) -> Path:
    """`model.path` as a local HF folder: the folder itself, or a hub name's snapshot in the local Hugging Face cache
    (what `from_pretrained` found when the run loaded it). Offline without it, ValueError saying what to download."""
    if Path(path).is_dir():
        return Path(path)
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(path, local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, FileNotFoundError):
        raise ValueError(
            f"the run's base model.path={path!r} is neither a local folder nor a hub model in the local Hugging Face "
            f"cache ({constants.HF_HUB_CACHE}): download it there first, on a machine with network access and the "
            f"same HF_HOME: `hf download {path}` (huggingface_hub's CLI; older: `huggingface-cli download {path}`), "
            "then run `rlwork export` again"
        ) from None
