"""Config sections for what a run reads and generates with: the model, its adapter, the data, the sampler, rewards.

Each section is a frozen, keyword-only dataclass: the only source of its defaults, validated in `__post_init__`
with messages that say how to fix the value (`rlwork.config.typed.ConfigError`).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from rlwork.config.typed import ConfigError

DATA_LANGUAGES = ("python", "cpp", "java", "javascript", "rust", "go", "any")
"""`data.language` values: the sandbox's languages (rewards.sandbox.languages; tests/config checks that they agree)
and `any`."""
BIDIRECTIONAL_FAMILIES = ("llada", "dream", "diffucoder", "masked-diffusion", "masked-diffusion-shifted")
"""The `model.family` presets with bidirectional attention (the rest are block-causal); the config layer cannot read
rlwork.models.FAMILIES, so tests/models/test_lm.py checks that the two agree."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
    path: str = "tiny"
    """HF checkpoint folder or hub name; `tiny` / `tiny-bidirectional` = an embedded tiny coder (built once); or an
    rlwork run/checkpoint folder (e.g. an SFT warm start): its weights merged into its base
    (rlwork.runtime.policies)."""
    family: Literal[
        "stable-diffcoder", "sdar", "llada", "dream", "diffucoder",
        "block-diffusion", "masked-diffusion", "masked-diffusion-shifted",
    ] = "stable-diffcoder"
    """Family preset: mask/eos/pad ids, attention kind, block size, logit shift (checked against the checkpoint)."""
    trust_remote_code: bool = False
    """Allow the checkpoint's own modelling code (needed for the real Stable-DiffCoder/Dream/LLaDA checkpoints)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Parameter dtype. bf16 on GPU; float32 on CPU."""
    device: str = "cpu"
    """torch device string, e.g. `cpu`, `cuda`, `cuda:1`."""
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    """Attention kernel. FlashAttention-2 cannot take the 4-D block-causal mask, so it is not offered."""
    block_size: int | None = None
    """Override the family's block size (block-causal families only); None = the preset's."""
    warm_start: bool = False
    """Start RL and `rlwork eval` not from model.path itself but from this recipe's diffusion SFT warm start (its
    `sft:` section trained on its training data: the demo's first stage), built on first use with a progress bar and
    cached under $RLWORK_CACHE/sft (`rlwork.demo.with_warm_start`). `rlwork sft` ignores it: it trains from
    model.path."""
    flush_denormal: bool = True
    """CPU: flush subnormal floats (below 1.2e-38) to zero in this process (`torch.set_flush_denormal`). A model in
    training grows subnormal activations and gradients, and CPU arithmetic on them is many times slower: with them
    kept, the tiny coder's SFT step slowed from 3.7 to 2.4 steps/s as it trained. Values that small do not move a
    log-probability or an update. false = IEEE subnormals. No effect on GPU kernels."""

    def __post_init__(self) -> None:
        if self.block_size is not None and self.block_size < 1:
            raise ConfigError(f"model.block_size={self.block_size}: use a positive block size or null for the preset")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoraConfig:
    enabled: bool = True
    """Train LoRA adapters (peft); false = full fine-tuning of every weight."""
    r: int = 16
    """Adapter rank."""
    alpha: int = 32
    """LoRA scaling numerator (scale = alpha / r)."""
    dropout: float = 0.0
    """Dropout on the adapter input."""
    target_modules: tuple[str, ...] | None = None
    """Names of the linear layers that get adapters, in every transformer layer (the LM head never does); null = the
    model.family preset's (Llama/Qwen: q/k/v/o_proj, gate/up/down_proj; LLaDA: q/k/v_proj, attn_out, ff_proj,
    up_proj, ff_out). A name missing from some layers is an error, not a partial adapter."""

    def __post_init__(self) -> None:
        if self.r < 1 or self.alpha <= 0:
            raise ConfigError(f"lora.r={self.r}, lora.alpha={self.alpha}: both must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.dropout={self.dropout}: use a probability in [0, 1)")
        if self.target_modules is not None and not self.target_modules:
            raise ConfigError("lora.target_modules is empty: name at least one module, e.g. [q_proj, v_proj], or "
                              "null for the family's")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConfig:
    dataset: str = "synthetic"
    """Adapter: synthetic, humaneval, mbpp, mbpp_plus, apps, codecontests, acecode, kodcode, multipl_e, mbxp,
    canitedit (rlwork.data.adapters)."""
    # With `columns` set, rows are mapped by that column mapping instead (rlwork.data.loading "mapped").
    data_files: tuple[str, ...] = ()
    """Local JSONL/parquet files (or a hub name in `hub_name`) for file-based adapters."""
    hub_name: str | None = None
    """A datasets hub name, for users with network access."""
    split: str = "train"
    """Split to read."""
    columns: dict[str, str] = dataclasses.field(default_factory=dict)
    """Column mapping onto our schema, e.g. {prompt: question, tests: test_list}."""
    chat: bool = True
    """Render prompts through the tokenizer's chat template (Instruct-style)."""
    prompt_style: Literal["instruct", "bare"] = "instruct"
    """instruct: the problem wrapped in an instruction and the answer format (for Instruct checkpoints);
    bare: the problem's own text alone (a model fine-tuned on exactly that format, like the tiny demo coder)."""
    skip_malformed: bool = False
    """Skip (and count) malformed rows instead of failing on the first one."""
    language: str = "python"
    """apps / codecontests: the language of the stdin/stdout programs (python, cpp, java, javascript, rust, go), or
    `any` (the answer's fenced block decides). multipl_e / mbxp rows name their own."""
    edit_instruction: Literal["descriptive", "lazy"] = "descriptive"
    """canitedit: which of CanItEdit's two instructions the prompt gives."""

    def __post_init__(self) -> None:
        if self.language not in DATA_LANGUAGES:
            raise ConfigError(f"data.language={self.language!r}: use one of {', '.join(DATA_LANGUAGES)}")
        if self.language != "python" and self.dataset not in ("apps", "codecontests"):
            raise ConfigError(f"data.language={self.language!r} applies to apps and codecontests; {self.dataset!r} "
                              "rows name their own language (or have none): leave data.language at python")
    synthetic_train: int = 256
    """Synthetic family: number of training tasks."""
    synthetic_heldout: int = 64
    """Synthetic family: tasks in each evaluation split: heldout (compositional: new compositions, never seen in
    training), iid (the training distribution, each task unseen in training) and valid (drawn like iid, disjoint
    from it: choose settings on valid, report iid)."""
    synthetic_fresh: bool = False
    """Synthetic family: the train split is `synthetic_train` i.i.d. draws from the generator (a fresh task in every
    SFT batch when it is sft.steps x sft.batch_size) instead of that many distinct tasks repeated each epoch."""
    synthetic_train_mix: tuple[float, ...] | None = None
    """Synthetic family, synthetic_fresh=true: weights of 1-, 2- and 3-step compositions among the SFT draws; null =
    the generator's own (0.2, 0.45, 0.35). iid/valid/rl keep the generator's."""
    synthetic_examples: bool = True
    """Synthetic family: the docstring shows one input/output example after the sentence that says the steps;
    false = the sentence alone (shorter prompts whose only numbers are the program's constants)."""
    synthetic_names: Literal["steps", "neutral"] = "steps"
    """Synthetic family: steps = each function is named after its steps (`evens_head`), which tells the templates
    without the docstring (a warm start follows the name where the two disagree); neutral = every function is
    `solve`, so the docstring is the only place the program is said."""
    synthetic_rl: int = 1024
    """Synthetic family: size of the `rl` split (RL prompts): programs never in training, drawn like iid/valid."""
    rl_split: str | None = None
    """Demo: the split RL draws its prompts from (e.g. rl); null = data.split (the warm start's)."""


REMASKING = ("low_confidence", "random", "margin", "entropy", "left_to_right")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplerConfig:
    """The batched block-diffusion sampler's settings (rlwork.diffusion.sampler.generate takes this object)."""

    max_new_tokens: int = 64
    """L: completion tokens per row."""
    steps_per_block: int = 4
    """Denoising steps per block; the block's masked tokens are spread evenly over them (earlier steps get more)."""
    block_size: int | None = None
    """Semi-AR block length. None: the model's block (block-causal) or the whole completion (bidirectional)."""
    temperature: float = 1.0
    """0 = greedy; > 0 samples by Gumbel-max in float64 and needs a torch.Generator."""
    top_k: int | None = None
    """Keep the k most likely tokens before sampling (temperature > 0 only)."""
    top_p: float | None = None
    """Nucleus filter before sampling (temperature > 0 only)."""
    remasking: Literal["low_confidence", "random", "margin", "entropy", "left_to_right"] = "low_confidence"
    """Which masked tokens a step commits: low_confidence | margin | entropy | random | left_to_right (the leftmost
    ones: within a block, the autoregressive order)."""
    threshold: float | None = None
    """Parallel decoding: also commit every masked token whose confidence reaches this (low_confidence, margin)."""
    use_cache: bool = True
    """Block-causal: exact KV cache. Bidirectional: Fast-dLLM prefix cache (approximate); False = exact."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError(f"sampler.max_new_tokens={self.max_new_tokens}: generate at least 1 token")
        if self.steps_per_block < 1:
            raise ConfigError(f"sampler.steps_per_block={self.steps_per_block}: use at least 1 step per block")
        if self.block_size is not None and self.block_size < 1:
            raise ConfigError(f"sampler.block_size={self.block_size}: use a positive block size or null")
        if self.temperature < 0:
            raise ConfigError(f"sampler.temperature={self.temperature}: use 0 (greedy) or a positive value")
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError(f"sampler.top_k={self.top_k}: use null (off) or k >= 1")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ConfigError(f"sampler.top_p={self.top_p}: use null (off) or a value in (0, 1]")
        if self.remasking not in REMASKING:
            raise ConfigError(f"sampler.remasking='{self.remasking}': choose one of {', '.join(REMASKING)}")
        if self.threshold is not None:
            if self.remasking not in ("low_confidence", "margin"):
                raise ConfigError(
                    f"threshold decoding compares a probability with the threshold; remasking='{self.remasking}' "
                    "gives none: use sampler.remasking='low_confidence' or 'margin', or sampler.threshold=null"
                )
            if not 0 <= self.threshold <= 1:
                raise ConfigError(f"sampler.threshold={self.threshold}: use a probability in [0, 1] or null")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RewardsConfig:
    functions: tuple[str, ...] = ("unit_tests", "format")
    """Reward names from rewards.registry, or dotted import paths (`pkg.mod:fn`)."""
    weights: tuple[float, ...] = (1.0, 0.1)
    """One weight per function; the scalar reward is their weighted sum."""
    kwargs: dict[str, dict] = dataclasses.field(default_factory=dict)
    """Parameters of the rewards that take them, by the name in `functions`, e.g. {overlong: {max_length: 256,
    cache_length: 64}} for DAPO's soft over-length penalty (lengths in completion tokens)."""
    timeout_s: float = 5.0
    """Wall-clock limit per program in the sandbox."""
    workers: int | None = None
    """Sandbox pool size; null = sized to the machine."""
    allow_weak_isolation: bool = False
    """Run without the strong sandbox layers when the kernel lacks them (logged loudly)."""

    def __post_init__(self) -> None:
        if not self.functions:
            raise ConfigError("rewards.functions is empty: name at least one reward, e.g. [unit_tests]")
        if len(self.weights) != len(self.functions):
            raise ConfigError(
                f"rewards.weights has {len(self.weights)} values for {len(self.functions)} functions: give one each"
            )
        if self.timeout_s <= 0:
            raise ConfigError(f"rewards.timeout_s={self.timeout_s}: use a positive number of seconds")
        stray = sorted(set(self.kwargs) - set(self.functions))
        if stray:
            raise ConfigError(f"rewards.kwargs names {stray}, which rewards.functions={list(self.functions)} does not "
                              "list: parameters go under the name of a reward in use")
        bad = [name for name, value in self.kwargs.items() if not isinstance(value, dict)]
        if bad:
            raise ConfigError(f"rewards.kwargs.{bad[0]}: expected a mapping of keyword arguments, e.g. "
                              "{max_length: 256, cache_length: 64}")
