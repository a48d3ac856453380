"""Shaping rewards: answer format, soft over-length penalty, weighted composition of rewards."""

import math

from rewards.extract import completion_text, fence_language, has_code_block
from rewards.sandbox.languages import canonical_language


class FormatReward:
    """1.0 if the completion holds a fenced code block in the row's language (the `language` column: Python without
    one, any language the sandbox runs for "any") (and, with `require_think`, a closed <think>...</think> section
    before it), else 0.0.

    Example:
        >>> FormatReward()(["p", "p"], ["```python\\nx = 1\\n```", "x = 1"])
        [1.0, 0.0]
    """

    def __init__(self, *, require_think: bool = False):
        self.require_think = require_think
        self.__name__ = "format_think" if require_think else "format"

    def __call__(self, prompts, completions, **columns) -> list[float | None]:
        out = []
        languages = columns.get("language")
        for i, completion in enumerate(completions):
            lang = languages[i] if languages is not None and languages[i] else "python"
            text = completion_text(completion)
            ok = _has_block(text, lang)
            if self.require_think:
                head, sep, _ = text.partition("</think>")
                ok = ok and bool(sep) and "<think>" in head and _has_block(text.partition("</think>")[2], lang)
            out.append(float(ok))
        return out


def _has_block(text: str, language: str) -> bool:
    """A fenced block in `language` ("any": in any language the sandbox runs)."""
    if language == "any":
        return fence_language(text) is not None
    return has_code_block(text, canonical_language(language) or "python")


class OverlongPenalty:
    """DAPO's soft overlong punishment (arXiv 2503.14476, eq. 13): 0 up to `max_length - cache_length`, then a
    linear ramp to -1 at `max_length`, and -1 beyond. Length is in tokens when the trainer passes
    `completion_ids` (TRL does), else in characters.

    Example:
        >>> OverlongPenalty(max_length=10, cache_length=4)([""] * 3, ["a" * 6, "a" * 8, "a" * 11])
        [0.0, -0.5, -1.0]
    """

    def __init__(self, *, max_length: int, cache_length: int):
        if not 0 < cache_length <= max_length:
            raise ValueError(f"cache_length={cache_length}: must be in (0, max_length={max_length}]")
        self.max_length, self.cache_length = max_length, cache_length
        self.__name__ = "overlong"

    def __call__(self, prompts, completions, completion_ids=None, **columns) -> list[float | None]:
        lengths = ([len(ids) for ids in completion_ids] if completion_ids is not None
                   else [len(completion_text(c)) for c in completions])
        start = self.max_length - self.cache_length
        return [0.0 if n <= start else -1.0 if n > self.max_length else (start - n) / self.cache_length
                for n in lengths]


class WeightedSum:
    """Weighted sum of several rewards per row. A component's None ("does not apply") is left out; a row
    where every component is None gets None.

    Example:
        >>> WeightedSum([FormatReward(), OverlongPenalty(max_length=4, cache_length=2)], [1.0, 0.5])(
        ...     ["p"], ["```python\\nx\\n```"])
        [0.5]
    """

    def __init__(self, reward_fns: list, weights: list[float] | None = None):
        weights = [1.0] * len(reward_fns) if weights is None else list(weights)
        if len(weights) != len(reward_fns):
            raise ValueError(f"weights: {len(weights)} given for {len(reward_fns)} rewards; give one per reward")
        self.reward_fns, self.weights = list(reward_fns), weights
        self.__name__ = "weighted(" + ",".join(getattr(f, "__name__", "?") for f in reward_fns) + ")"

    def __call__(self, prompts, completions, **columns) -> list[float | None]:
        totals: list[float | None] = [None] * len(completions)
        for fn, w in zip(self.reward_fns, self.weights, strict=True):
            for i, r in enumerate(fn(prompts, completions, **columns)):
                if r is not None and not math.isnan(r):
                    totals[i] = (totals[i] or 0.0) + w * r
        return totals


format_reward = FormatReward()
