"""Make an exported HF folder generate by block diffusion: the sampler rlwork trains with (`diffusion_kernel.py`,
torch only) goes in as is, `hf_generation.py` as `rlwork_generation.py`, and the config's `auto_map` points
AutoModelForCausalLM at the model's own class with `DiffusionGenerationMixin` first among its bases.

The config gains an `rlwork` section: the family's facts (mask/eos/pad ids, attention kind, block size, logit shift,
and `forward`, how its forward is called: mask keyword and format, positions, cache keyword), the run's sampler
settings (generate()'s defaults), its prompt format (`chat`, `prompt_style`) and which class was wrapped
(`base_class`), so that exporting an export wraps the original class again, not the wrapper.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

from rlwork.config import SamplerConfig
from rlwork.models import diffusion_kernel, hf_generation
from rlwork.models.families import FamilySpec, family_facts

GENERATION_FILE = "rlwork_generation.py"
KERNEL_FILE = "diffusion_kernel.py"  # the name rlwork_generation.py imports it by
WRAPPER_MODULE = "modeling_rlwork"
WRAPPER_CLASS = "RlworkDiffusionLM"

WRAPPER_SOURCE = '''"""Written by `rlwork export`: {base} with a block-diffusion `generate` (rlwork_generation.py)."""

{import_base}
from .rlwork_generation import DiffusionGenerationMixin


class {name}(DiffusionGenerationMixin, _Base):
    pass
'''


def _base_class(config: dict, auto_class: str) -> str:
    """`module.Class` of the folder's own remote code (the family's auto class in `auto_map`: LLaDA and Dream map
    AutoModel), or `transformers.Class` for a library model."""
    previous = (config.get("rlwork") or {}).get("base_class")
    if previous:
        return previous
    auto_map = config.get("auto_map") or {}
    auto = auto_map.get(auto_class) or auto_map.get("AutoModelForCausalLM")
    if auto and not auto.startswith(f"{WRAPPER_MODULE}."):
        if "--" in auto:
            raise ValueError(f"auto_map names code in another repository ({auto}): copy that code into the folder")
        return auto
    architectures = config.get("architectures") or []
    if not architectures:
        raise ValueError("config.json names no model class (architectures): cannot add a diffusion generate")
    return f"transformers.{architectures[0]}"


def add_diffusion_generate(folder: str | Path, family: FamilySpec, sampler: dict[str, Any],
                           prompt: dict[str, Any]) -> None:
    """Make `AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).generate` sample by block
    diffusion with `family`'s facts, `sampler`'s settings as defaults (a `sampler:` config section; missing keys
    take SamplerConfig's defaults) and the `prompt` format recorded."""
    folder = Path(folder)
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    base = _base_class(config, family.auto_class)
    module, cls = base.rsplit(".", 1)
    import_base = (f"from transformers import {cls} as _Base" if module == "transformers"
                   else f"from .{module} import {cls} as _Base")
    shutil.copyfile(diffusion_kernel.__file__, folder / KERNEL_FILE)
    shutil.copyfile(hf_generation.__file__, folder / GENERATION_FILE)
    (folder / f"{WRAPPER_MODULE}.py").write_text(WRAPPER_SOURCE.format(base=base, import_base=import_base,
                                                                       name=WRAPPER_CLASS))
    auto_map = {**(config.get("auto_map") or {}), "AutoModelForCausalLM": f"{WRAPPER_MODULE}.{WRAPPER_CLASS}"}
    config["auto_map"] = auto_map
    defaults = dataclasses.asdict(SamplerConfig())
    settings = {k: sampler.get(k, defaults[k]) for k in diffusion_kernel.SAMPLING_KEYS}
    config["rlwork"] = {**family_facts(family), "sampler": settings, **prompt, "base_class": base}
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
