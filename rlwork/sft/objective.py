"""Diffusion SFT maths: maximise the model's own ELBO of reference solutions (completion tokens only).

Block-causal models use the clipped per-block linear schedule with 1/u weights (Stable-DiffCoder's recipe);
bidirectional ones the LLaDA schedule with 1/t weights: both come from `diffusion.masking.draw_masks("mc")`.
The loss of a batch is -sum(ELBO) / (completion tokens), a per-token negative ELBO (an upper bound on the
per-token negative log-likelihood). Like Stable-DiffCoder's SFT, 1 to `max_eos` EOS tokens are appended to each
target so the model learns to stop at variable lengths. The training loop is `rlwork.sft.trainer`.

Shape letters: N rows, P prompt length, L completion (target) length.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from rewards.extract import is_code_stub
from rlwork.config import DataConfig
from rlwork.diffusion.elbo import elbo
from rlwork.diffusion.masking import draw_masks
from rlwork.diffusion.rollout import tokenize_prompts
from rlwork.models.lm import DiffusionLM


def target_text(problem: dict[str, Any], continuation: bool = False) -> str:
    """The SFT target for a problem: its reference solution in one fenced Python block (an Instruct answer).

    With `continuation` (plain, non-chat prompts) and a prompt that is a code stub defining the entry point, the
    target is instead what follows the stub, as a base model continues it (HumanEval's convention; the reward
    runs prompt + completion, `rewards.extract.program_for`): the reference minus the prompt when it starts with
    it, else minus its header up to the entry point's `def` line when that line equals the prompt's.
    """
    reference = problem.get("reference")
    if not isinstance(reference, str) or not reference.strip():
        text = isinstance(reference, str) or reference is None
        what = "no 'reference'" if text else f"a non-text 'reference' ({type(reference).__name__})"
        raise ValueError(f"task {problem.get('task_id')!r} has {what} solution to fine-tune on")
    prompt, entry_point = problem.get("prompt"), problem.get("entry_point")
    if continuation and isinstance(prompt, str) and entry_point and is_code_stub(prompt, entry_point):
        if reference.startswith(prompt):
            return reference[len(prompt):]
        header = _def_header(prompt, entry_point)
        if header is not None and _def_header(reference, entry_point) == header:
            return reference[reference.index(header) + len(header):]
        raise ValueError(f"task {problem.get('task_id')!r}: the reference neither starts with the prompt stub nor "
                         f"shares its `def {entry_point}` line, so there is no continuation to train on; use "
                         "data.chat=true (fenced answers) for this data")
    return f"```python\n{reference.rstrip()}\n```"


def continue_files(targets: list[str], references: list[str], goes_on: list[bool]) -> list[str]:
    """Targets of one global batch in which some files go on past their function (`sft.continue_file`).

    Row i with goes_on[i] is followed, as in a raw source file, by the next row's reference (stub and body,
    cyclically: the last row is followed by the first), after the blank lines PEP 8 puts between functions; the
    other rows are unchanged. targets, references, goes_on: one per row of the global batch.

    Example:
        >>> continue_files(["    return x\\n", "    return 1\\n"], ["def f(x):\\n    return x\\n", "def g():\\n    "
        ...                "return 1\\n"], [True, False])
        ['    return x\\n\\n\\ndef g():\\n    return 1\\n', '    return 1\\n']
    """
    if not len(targets) == len(references) == len(goes_on):
        raise ValueError(f"{len(targets)} targets, {len(references)} references, {len(goes_on)} draws: need one "
                         "of each per row")
    n = len(targets)
    return [t.rstrip("\n") + "\n\n\n" + references[(i + 1) % n].lstrip("\n") if on else t
            for i, (t, on) in enumerate(zip(targets, goes_on, strict=True))]


_LAST_RETURN = re.compile(r"^([ \t]+)return[ \t]+(.+?)[ \t]*$")


def script_style(target: str) -> str:
    """A continuation target written script-style (`sft.print_file`): its last non-blank line `return EXPR` becomes
    `print(EXPR)`, with its indentation and the text after it kept; a target that does not end in a return is
    returned unchanged.

    Example:
        >>> script_style("    x = x + 1\\n    return x * 2\\n")
        '    x = x + 1\\n    print(x * 2)\\n'
    """
    lines = target.split("\n")
    last = max((i for i, line in enumerate(lines) if line.strip()), default=None)
    match = _LAST_RETURN.match(lines[last]) if last is not None else None
    if match is None:
        return target
    lines[last] = f"{match.group(1)}print({match.group(2)})"
    return "\n".join(lines)


def _def_header(code: str, entry_point: str) -> str | None:
    """The text from the start of `code` through the end of the line that opens `def entry_point`."""
    match = re.search(rf"^(?:async\s+)?def\s+{re.escape(entry_point)}\b[^\n]*\n", code, re.MULTILINE)
    return code[: match.end()] if match else None


def continues_prompts(cfg: DataConfig) -> bool:
    """Whether SFT targets continue the prompt (plain code-stub prompts) rather than answer it (chat/instruct)."""
    return not cfg.chat and cfg.prompt_style == "bare"


def check_targets(problems: list[dict[str, Any]], source: str = "the data", continuation: bool = False) -> None:
    """Raise ValueError naming the first row whose reference solution is missing or not text (before any compute)."""
    for i, problem in enumerate(problems):
        try:
            target_text(problem, continuation)
        except ValueError as err:
            raise ValueError(
                f"row {i} of {source}: {err}. SFT trains on reference solutions: map a solution column with "
                "data.columns (e.g. {reference: solution}) or use a dataset whose adapter provides one"
            ) from None


@dataclass(frozen=True)
class SftBatch:
    """Prompts and targets of N rows, tokenized.

    Attributes:
        prompt_ids: [N, P] int64, left-padded. prompt_mask: [N, P] bool.
        completion_ids: [N, L] int64, right-padded; each target ends in 1..max_eos EOS tokens (unless cut at its
            window: `sft.continue_file`).
        completion_mask: [N, L] bool; the target tokens (EOS included): the only tokens the loss scores.
    """

    prompt_ids: Tensor
    prompt_mask: Tensor
    completion_ids: Tensor
    completion_mask: Tensor

    @property
    def num_tokens(self) -> int:
        """Real (non-pad) prompt and completion tokens."""
        return int(self.prompt_mask.sum() + self.completion_mask.sum())


def encode_targets(lm: DiffusionLM, texts: list[str], num_eos: list[int], windows: list[int | None] | None = None
                   ) -> tuple[Tensor, Tensor]:
    """Right-padded completion ids [N, L] ending in `num_eos[i]` EOS tokens, and their mask [N, L].

    A row with a window (`windows[i]`, tokens) longer than the window is cut there with no EOS after it, as a
    pretraining window cuts a file; a row that fits its window ends in its EOS tokens like any other.
    """
    windows = windows if windows is not None else [None] * len(texts)
    encoded = []
    for text, k, window in zip(texts, num_eos, windows, strict=True):
        tokens = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
        encoded.append(tokens[:window] if window is not None and len(tokens) > window else tokens + [lm.eos_id] * k)
    width = max(len(e) for e in encoded)
    ids = torch.full((len(encoded), width), lm.pad_id, dtype=torch.long)
    mask = torch.zeros(len(encoded), width, dtype=torch.bool)
    for i, e in enumerate(encoded):
        ids[i, : len(e)] = torch.tensor(e)
        mask[i, : len(e)] = True
    return ids.to(lm.device), mask.to(lm.device)


def make_batch(lm: DiffusionLM, prompt_texts: list[str], targets: list[str], generator: torch.Generator,
               max_eos: int, windows: list[int | None] | None = None) -> SftBatch:
    """Tokenize N prompts and targets; each target gets 1..max_eos EOS tokens drawn from `generator`, except one
    cut at its window (`encode_targets`)."""
    num_eos = torch.randint(1, max_eos + 1, (len(targets),), generator=generator).tolist()
    prompt_ids, prompt_mask = tokenize_prompts(lm.tokenizer, prompt_texts, lm.pad_id, lm.device)
    completion_ids, completion_mask = encode_targets(lm, targets, num_eos, windows)
    return SftBatch(prompt_ids, prompt_mask, completion_ids, completion_mask)


def negative_elbo(lm: DiffusionLM, batch: SftBatch, generator: torch.Generator, num_samples: int = 1,
                  model: torch.nn.Module | None = None) -> Tensor:
    """-ELBO of each row's target under `num_samples` fresh mask draws ("mc": the model's own SFT schedule).

    Returns [N] float32 with grad (sum over the row's target tokens; divide by tokens for a per-token loss).
    """
    draw = draw_masks("mc", batch.completion_mask, num_samples, lm.block_size, generator,
                      prompt_mask=batch.prompt_mask)
    out = elbo(lm, batch.prompt_ids, batch.prompt_mask, batch.completion_ids, batch.completion_mask, draw,
               model=model)
    return -out.sequence


def learning_rate_at(step: int, total_steps: int, peak: float, warmup_steps: int, schedule: str = "cosine") -> float:
    """Learning rate of optimizer step `step` (0-based) of `total_steps`.

    Linear warm-up to `peak` over the first `warmup_steps` steps (0 = none), times a cosine decay towards 0 at
    `total_steps` (`schedule="cosine"`) or times 1 (`"constant"`). A pure function of the step, so a resumed run
    needs no scheduler state.

    >>> learning_rate_at(0, 10, 1.0, 0), learning_rate_at(5, 10, 1.0, 0, "constant")
    (1.0, 1.0)
    """
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"schedule={schedule!r}: choose 'cosine' or 'constant'")
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    decay = 0.5 * (1 + math.cos(math.pi * step / total_steps)) if schedule == "cosine" else 1.0
    return peak * warm * decay
