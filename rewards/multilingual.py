"""Which language a row's program is in, and the program itself, for the test-based rewards.

The language comes from the row: the tests spec's own `language`, else the dataset's `language` column. A row that
names none takes the language of the answer's fenced code block when its tests can run there (stdio tests always;
call tests when their signature can be written in that language), else Python. Assert-style tests are Python.
"""

from __future__ import annotations

import dataclasses

from rewards import harness
from rewards import spec as specs
from rewards.extract import fence_language, program_for
from rewards.sandbox.languages import canonical_language


def row_language(column, i: int) -> str | None:
    """Row i's entry of a dataset's `language` column (None when there is no such column or value)."""
    if column is None:
        return None
    value = column[i]
    if value == "any":  # the answer's language decides
        return None
    lang = canonical_language(value) if value else None
    if value and lang is None:
        raise ValueError(f"language column: {value!r} is not a language the sandbox runs; use python or one of "
                         f"{', '.join(harness.TARGETS)}")
    return lang


def resolve_language(sp, completion, row_lang: str | None) -> str:
    """The language to run a row's program in (see the module docstring)."""
    if isinstance(sp, specs.AssertSpec):
        return "python"
    chosen = getattr(sp, "language", None) or row_lang
    if chosen:
        return chosen
    tag = fence_language(completion)
    if tag in (None, "python"):
        return "python"
    if isinstance(sp, specs.CallSpec):
        try:
            harness.validate(tag, sp.entry_point, sp.signature, sp.cases)
        except ValueError:  # its tests cannot call a function in that language: the row is Python's
            return "python"
    return tag


def prepare_row(prompt, completion, sp, row_lang: str | None = None):
    """(spec with its language decided, program) for one row."""
    lang = resolve_language(sp, completion, row_lang)
    if lang != "python" and getattr(sp, "language", None) != lang:
        if isinstance(sp, specs.CallSpec):
            harness.validate(lang, sp.entry_point, sp.signature, sp.cases)
        sp = dataclasses.replace(sp, language=lang)
    return sp, program_for(prompt, completion, getattr(sp, "entry_point", None), lang)
