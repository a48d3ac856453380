"""Code editing: an optional reward term for the size of an edit (CanItEdit-style tasks, `original` column).

A model asked to revise code can pass the tests by rewriting everything; editing benchmarks prefer the smallest
revision that does the job. This term measures how much of the original the answer's code changed and returns it
as a penalty, to be weighted beside the unit-test reward (`rewards.weights`). Rows without an original get None.
"""

from __future__ import annotations

import difflib

from rewards.extract import extract_code
from rewards.sandbox.languages import canonical_language

MAX_CHARS = 20_000
"""Longer code is compared line by line even with unit="chars" (the character diff is quadratic at worst)."""


def changed_fraction(original: str, revised: str, unit: str = "lines") -> float:
    """1 - difflib's similarity ratio of the two texts, by lines or characters: 0 = unchanged, 1 = nothing kept.

    >>> changed_fraction("a\\nb\\nc\\nd\\n", "a\\nb\\nX\\nd\\n")
    0.25
    """
    if unit not in ("lines", "chars"):
        raise ValueError(f"unit={unit!r}: measure edits in 'lines' or 'chars'")
    if unit == "chars" and max(len(original), len(revised)) <= MAX_CHARS:
        a, b = original, revised
    else:
        a, b = original.splitlines(), revised.splitlines()
    if not a and not b:
        return 0.0
    return 1.0 - difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


class EditSizeReward:
    """-(fraction of the original changed beyond `free`), in [-1, 0]; None for rows without `column`.

    An answer with no code of the row's language counts as replacing everything (-1 + free).

    Example:
        >>> reward = EditSizeReward()
        >>> reward(["p", "p"], ["```python\\nx = 2\\ny = 2\\n```", "```python\\nx = 1\\ny = 2\\n```"],
        ...        original=["x = 1\\ny = 2\\n", "x = 1\\ny = 2\\n"])
        [-0.5, 0.0]
    """

    def __init__(self, *, unit: str = "lines", free: float = 0.0, column: str = "original"):
        changed_fraction("", "", unit)  # checks the unit
        if not 0.0 <= free < 1.0:
            raise ValueError(f"free={free}: the fraction changed at no cost must be in [0, 1)")
        self.unit, self.free, self.column = unit, free, column
        self.__name__ = "edit_size" if unit == "lines" else "edit_size_chars"

    def __call__(self, prompts, completions, **columns) -> list[float | None]:
        originals = columns.get(self.column)
        languages = columns.get("language")
        out: list[float | None] = []
        for i, completion in enumerate(completions):
            original = originals[i] if originals is not None else None
            if not isinstance(original, str):
                out.append(None)
                continue
            lang = canonical_language(languages[i]) if languages is not None and languages[i] else None
            revised = extract_code(completion, None, lang or "python")
            changed = changed_fraction(original, revised, self.unit) if revised else 1.0
            out.append(0.0 - max(0.0, changed - self.free))  # 0.0, never -0.0
        return out


edit_size_reward = EditSizeReward()
edit_size_chars_reward = EditSizeReward(unit="chars")
