"""Shared by the multilingual tests: which toolchains are here, and a skip that says what to install."""

import pytest

from rewards.sandbox.languages import LANGUAGES, ToolchainMissing

NATIVE = tuple(LANGUAGES)


def missing(lang: str) -> str | None:
    """Why `lang` cannot run here (with the install command), or None."""
    try:
        LANGUAGES[lang].paths()
        return None
    except ToolchainMissing as exc:
        return str(exc)


def need(lang: str) -> None:
    why = missing(lang)
    if why is not None:
        pytest.skip(f"{lang} toolchain absent: {why}")


def params(langs=NATIVE) -> list:
    """pytest params, one per language, marked to skip (saying what to install) where the toolchain is absent."""
    return [pytest.param(lang, marks=pytest.mark.skipif(missing(lang) is not None,
                                                         reason=f"{lang} toolchain absent: {missing(lang)}"))
            for lang in langs]
