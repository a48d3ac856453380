"""`rlwork generate`: completions of prompts by a run folder, an exported Instruct folder or a base model, with the
block-diffusion sampler, streamed block by block as the blocks are committed.

An exported folder runs through its own remote code (`AutoModelForCausalLM.from_pretrained(...,
trust_remote_code=True).generate`, `models.hf_generation`), exactly as a user without rlwork would run it; a run
folder is loaded as a starting model (its weights merged into its base) and sampled by the same function. Either way
the sampler settings default to the run's, except the temperature: 0 (greedy) unless asked.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlwork.config import ModelConfig, SamplerConfig
from rlwork.config.typed import ConfigError, build, read_yaml
from rlwork.models.families import family_facts
from rlwork.models.hf_generation import SAMPLING_KEYS, diffusion_generate
from rlwork.runtime.policies import load_model, run_checkpoint


@dataclass
class Generator:
    """What sampling needs: the model, its tokenizer, the family facts, the default settings and prompt format."""

    model: Any
    tokenizer: Any
    facts: dict[str, Any]
    settings: dict[str, Any]
    chat: bool


def _settings(sampler: dict[str, Any]) -> dict[str, Any]:
    return {k: sampler.get(k) for k in SAMPLING_KEYS}


def load_generator(path: str | os.PathLike, family: str = "stable-diffcoder") -> Generator:
    """An exported folder (config.json with an `rlwork` section), an rlwork run or checkpoint folder, or any other
    model folder or tiny variant (as `family`, with the default sampler settings and no chat template)."""
    path = Path(path)
    config_json = path / "config.json"
    if config_json.is_file() and "rlwork" in json.loads(config_json.read_text()):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True).eval()
        facts = dict(model.config.rlwork)
        return Generator(model, AutoTokenizer.from_pretrained(path), facts, _settings(facts["sampler"]),
                         bool(facts.get("chat", False)))
    ckpt = run_checkpoint(path)
    if ckpt is None:
        lm = load_model(ModelConfig(path=str(path), family=family, trust_remote_code=True))
        return Generator(lm.model.eval(), lm.tokenizer, family_facts(lm.family),
                         _settings(dataclasses.asdict(SamplerConfig())), False)
    saved = read_yaml(ckpt / "config.yaml")
    try:
        model_cfg = build(ModelConfig, saved.get("model"), prefix="model")
        sampler = build(SamplerConfig, saved.get("sampler") or {}, prefix="sampler")
    except ConfigError as err:
        raise ValueError(f"{ckpt}/config.yaml: {err}") from None
    lm = load_model(dataclasses.replace(model_cfg, path=str(ckpt)))  # the run's weights merged into its base
    chat = bool((saved.get("data") or {}).get("chat", True))
    return Generator(lm.model.eval(), lm.tokenizer, family_facts(lm.family), _settings(dataclasses.asdict(sampler)),
                     chat)


def prompt_text(gen: Generator, prompt: str) -> str:
    """The text the model sees: the prompt in the chat template when the run trained on chat prompts, else as is."""
    if not gen.chat:
        return prompt
    return gen.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                             tokenize=False)


def generate_texts(gen: Generator, prompts: list[str], overrides: dict[str, Any] | None = None, seed: int = 0,
                   stream: bool = False) -> list[str]:
    """One completion per prompt (special tokens dropped); with `stream`, each is printed to stdout block by block
    as the sampler commits it (transformers' TextStreamer)."""
    from transformers import TextStreamer

    settings = {**gen.settings, "temperature": 0.0, **(overrides or {})}
    unknown = sorted(set(settings) - set(SAMPLING_KEYS))
    if unknown:
        raise ValueError(f"unknown sampler settings {unknown}: use {', '.join(SAMPLING_KEYS)}")
    device = next(gen.model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    texts = []
    for prompt in prompts:
        ids = gen.tokenizer(prompt_text(gen, prompt), add_special_tokens=False, return_tensors="pt")["input_ids"]
        streamer = TextStreamer(gen.tokenizer, skip_prompt=True, skip_special_tokens=True) if stream else None
        completion = diffusion_generate(gen.model, gen.facts, ids.to(device), None, settings, generator, streamer)
        texts.append(gen.tokenizer.decode(completion[0], skip_special_tokens=True))
    return texts
