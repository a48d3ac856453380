"""Fixtures for the rewards tests: one sandbox per session (starting one costs ~0.1 s, but keep it shared)."""

import pytest

from rewards.sandbox import Evaluator, Limits


@pytest.fixture(scope="session")
def evaluator():
    ev = Evaluator(limits=Limits(timeout=2.0))
    yield ev
    ev.close()
