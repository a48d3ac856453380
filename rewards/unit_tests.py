"""Unit-test rewards: run each completion's code against its row's `tests` column in the sandbox.

`detailed(...)` returns the scores with each row's sandbox `Outcome` (per-test verdicts), the declared interface
of `rewards.registry` that trainers read. Under TRL, which calls the reward itself, the last batch's outcomes stay
on the object (`last_outcomes`) and flat metrics go through TRL's `log_metric` when the trainer passes it
(`last_metrics`). `evaluate(...)` gives the same outcomes without making a reward.
"""

import logging
import math

from rewards import spec as specs
from rewards.contract import Detailed
from rewards.extract import program_for
from rewards.sandbox import Evaluator, Limits, Outcome
from rewards.sandbox.verdict import CATEGORIES

log = logging.getLogger("rewards.unit_tests")


class UnitTestReward:
    """Fraction of a row's tests passed (`binary=True`: 1.0 only if all pass).

    Returns None for rows with no spec (does not apply) and for rows the sandbox could not score
    (sandbox_error: our fault, counted in `stats` and logged, never a silent 0).

    Example:
        >>> reward = UnitTestReward()
        >>> tests = '{"kind": "call", "entry_point": "sq", "cases": [{"args": [3], "expected": 9}]}'
        >>> reward(["p"], ["```python\\ndef sq(x):\\n    return x * x\\n```"], tests=[tests])  # doctest: +SKIP
        [1.0]
    """

    def __init__(self, *, binary: bool = False, tests_column: str = "tests", timeout: float = 5.0,
                 memory_mb: int = 1024, max_concurrency: int | None = None, allow_weak: bool = False):
        self.binary = binary
        self.tests_column = tests_column
        self.limits = Limits(timeout=timeout, memory_mb=memory_mb)
        self.sandbox_kw = {"max_concurrency": max_concurrency, "allow_weak": allow_weak}
        self.__name__ = "unit_tests_binary" if binary else "unit_tests"
        self._evaluator = None
        self.last_outcomes: list[Outcome | None] = []
        self.last_metrics: dict[str, float] = {}
        self.stats = {"programs": 0, "sandbox_errors": 0, "bad_specs": 0}

    def __getstate__(self):  # picklable for worker processes: the sandbox is started lazily where it runs
        state = dict(self.__dict__)
        state["_evaluator"] = None
        return state

    @property
    def evaluator(self) -> Evaluator:
        if self._evaluator is None:
            self._evaluator = Evaluator(limits=self.limits, **self.sandbox_kw)
        return self._evaluator

    def close(self) -> None:
        if self._evaluator is not None:
            self._evaluator.close()
            self._evaluator = None

    def with_sandbox(self, *, timeout: float | None = None, max_concurrency: int | None = None,
                     allow_weak: bool | None = None) -> "UnitTestReward":
        """A copy of this reward (same name, scoring and tests column) whose programs run with these sandbox
        settings; None keeps this reward's value. `rewards.registry.get_reward(name, sandbox=...)` calls it."""
        return UnitTestReward(
            binary=self.binary, tests_column=self.tests_column, memory_mb=self.limits.memory_mb,
            timeout=self.limits.timeout if timeout is None else timeout,
            max_concurrency=self.sandbox_kw["max_concurrency"] if max_concurrency is None else max_concurrency,
            allow_weak=self.sandbox_kw["allow_weak"] if allow_weak is None else allow_weak,
        )

    def __call__(self, prompts, completions, **columns) -> list[float | None]:
        return self.detailed(prompts, completions, **columns).scores

    def detailed(self, prompts, completions, **columns) -> Detailed:
        """The rewards, and each row's sandbox `Outcome` (None for rows without a usable spec)."""
        column = columns.get(self.tests_column)
        if column is None:
            return Detailed([None] * len(completions), [None] * len(completions))
        rows, programs, parsed = [], [], []
        for i, (prompt, completion, tests) in enumerate(zip(prompts, completions, column, strict=True)):
            if not tests:
                continue
            try:
                sp = specs.parse(tests)
            except ValueError as exc:
                self.stats["bad_specs"] += 1
                log.error("%s: row %d has a malformed tests spec (%s); scored None", self.__name__, i, exc)
                continue
            rows.append(i)
            programs.append(program_for(prompt, completion, getattr(sp, "entry_point", None)))
            parsed.append(sp)
        outcomes = self.evaluator.evaluate(programs, parsed) if programs else []
        per_row: list[Outcome | None] = [None] * len(completions)
        rewards: list[float | None] = [None] * len(completions)
        for i, out in zip(rows, outcomes, strict=True):
            per_row[i] = out
            if out.sandbox_error:
                log.error("%s: sandbox error on row %d (%s); scored None", self.__name__, i, out.detail)
            else:
                rewards[i] = float(out.passed == out.total) if self.binary else out.fraction
        self.stats["programs"] += len(outcomes)
        self.stats["sandbox_errors"] += sum(o.sandbox_error for o in outcomes)
        self.last_outcomes, self.last_metrics = per_row, summarise(outcomes)
        log_metric = columns.get("log_metric")
        if callable(log_metric):
            for key, value in self.last_metrics.items():
                log_metric(key, value)
        return Detailed(rewards, per_row)


def summarise(outcomes: list[Outcome]) -> dict[str, float]:
    """Flat `sandbox/<category>_frac` metrics over programs (by overall category) plus mean test fraction."""
    n = len(outcomes)
    if not n:
        return {}
    metrics = {f"sandbox/{c}_frac": sum(o.category == c for o in outcomes) / n for c in CATEGORIES}
    metrics["sandbox/tests_passed_frac"] = sum(o.fraction for o in outcomes) / n
    metrics["sandbox/seconds_mean"] = sum(o.elapsed for o in outcomes) / n
    return {k: v for k, v in metrics.items() if not math.isnan(v)}


def evaluate(completions: list, tests: list, evaluator: Evaluator | None = None,
             prompts: list | None = None) -> list[Outcome]:
    """Detailed outcomes (per-test categories) for completions against their `tests` specs.

    With `prompts`, a completion that continues a code-stub prompt is run as prompt + completion (`program_for`).
    """
    own = evaluator is None
    ev = evaluator or Evaluator()
    try:
        parsed = [specs.parse(t) for t in tests]
        prompts = [None] * len(completions) if prompts is None else prompts
        programs = [program_for(p, c, getattr(sp, "entry_point", None))
                    for p, c, sp in zip(prompts, completions, parsed, strict=True)]
        return ev.evaluate(programs, parsed)
    finally:
        if own:
            ev.close()


unit_test_reward = UnitTestReward()
all_pass_reward = UnitTestReward(binary=True)
