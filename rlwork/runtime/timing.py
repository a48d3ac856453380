"""Wall-clock timing of a step's phases (`perf/<phase>_s`)."""

from __future__ import annotations

import time
from contextlib import contextmanager


class PhaseTimer:
    """Wall-clock seconds per named phase of one step; a phase entered twice adds up."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def metrics(self) -> dict[str, float]:
        """`perf/<phase>_s` per phase and `perf/step_s`, their sum."""
        out = {f"perf/{name}_s": seconds for name, seconds in self.seconds.items()}
        out["perf/step_s"] = sum(self.seconds.values())
        return out
