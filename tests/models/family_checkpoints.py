"""Tiny checkpoints in each family's published layout, saved the way the real ones ship: remote code next to the
weights and an `auto_map` naming the family's auto class (tests/models/families/*.py hold the modelling code).

The tiny byte-level tokenizer (1,024 tokens) cannot hold the ids the LLaDA, Dream and DiffuCoder presets fix for
the released checkpoints (126336, 151666), so `tiny_presets` gives the tests those presets with the ids left to
the checkpoint; everything else (forward convention, auto class, LoRA targets) is the preset itself.
"""

import dataclasses
import importlib.util
import json
import shutil
from pathlib import Path

import torch

from rlwork.models.families import FAMILIES
from rlwork.models.tiny import ensure_tiny_coder

CODE = Path(__file__).resolve().parent / "families"
# family -> (modelling file, config class, model class, auto class its auto_map names)
LAYOUTS = {
    "llada": ("modeling_tiny_llada.py", "LLaDAConfig", "LLaDAModelLM", "AutoModel"),
    "dream": ("modeling_tiny_dream.py", "DreamConfig", "DreamModel", "AutoModel"),
    "diffucoder": ("modeling_tiny_dream.py", "DreamConfig", "DreamModel", "AutoModel"),  # Dream's published code
    "sdar": ("modeling_tiny_sdar.py", "SDARConfig", "SDARForCausalLM", "AutoModelForCausalLM"),
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")


def tiny_presets() -> dict:
    """FAMILIES with the released checkpoints' ids cleared (read from the tiny checkpoint instead)."""
    return {name: dataclasses.replace(spec, mask_token_id=None, eos_token_id=None, pad_token_id=None)
            if spec.mask_token_id is not None and name != "stable-diffcoder" else spec
            for name, spec in FAMILIES.items()}


def build_family_checkpoint(family: str, directory: Path, seed: int = 0) -> Path:
    """A tiny checkpoint of `family` in `directory` (stable-diffcoder: the embedded tiny coder itself)."""
    tiny = ensure_tiny_coder("tiny")
    if family == "stable-diffcoder":
        return tiny
    filename, config_name, model_name, auto_class = LAYOUTS[family]
    spec = importlib.util.spec_from_file_location(f"tiny_{family}", CODE / filename)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    directory.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (tiny / name).is_file():
            shutil.copy2(tiny / name, directory / name)
    vocab = json.loads((tiny / "config.json").read_text())["vocab_size"]
    config = getattr(module, config_name)(vocab_size=vocab, bos_token_id=0, pad_token_id=1, eos_token_id=2,
                                          mask_token_id=5, tie_word_embeddings=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(module, model_name)(config)
    model.save_pretrained(directory)
    shutil.copy2(CODE / filename, directory / filename)
    stem = filename.removesuffix(".py")
    saved = json.loads((directory / "config.json").read_text())
    saved.update(architectures=[model_name], auto_map={"AutoConfig": f"{stem}.{config_name}",
                                                       auto_class: f"{stem}.{model_name}"})
    (directory / "config.json").write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
    return directory
