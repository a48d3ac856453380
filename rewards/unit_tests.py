"""Unit-test rewards: run each completion's code against its row's `tests` column in the sandbox.

A row without a `tests` value is scored from its dataset's own test columns when it has them (HumanEval's `test`
and `entry_point`, MBPP's `test_list`, AceCode's `test_cases`: rewards.native), so a dataset passed to TRL as it
comes is scored. A batch in which no row has tests of either kind is said once in the log, naming the columns.

The program's language is the spec's, else the row's `language` column, else the answer's fence tag, else Python
(`rewards.multilingual`).

`detailed(...)` returns the scores with each row's sandbox `Outcome` (per-test verdicts), the declared interface
of `rewards.registry` that trainers read. Under TRL, which calls the reward itself, the last batch's outcomes stay
on the object (`last_outcomes`) and flat metrics go through TRL's `log_metric` when the trainer passes it
(`last_metrics`). `evaluate(...)` gives the same outcomes without making a reward.
"""

import logging
import math

from rewards import native
from rewards import spec as specs
from rewards.contract import Detailed
from rewards.multilingual import prepare_row, row_language
from rewards.sandbox import Evaluator, Limits, Outcome
from rewards.sandbox.verdict import CATEGORIES

log = logging.getLogger("rewards.unit_tests")
_WARNED_NO_TESTS: set[str] = set()
"""Reward names that already said, in this process, that a batch had no tests."""


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
        n = len(completions)
        column = columns.get(self.tests_column)
        if column is not None and len(column) != n:
            raise ValueError(f"{self.__name__}: {len(column)} values in column {self.tests_column!r} for {n} "
                             "completions")
        rows, programs, parsed, bad = [], [], [], 0
        native_rows = None
        for i, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
            tests = column[i] if column is not None else None
            try:
                if tests:
                    sp = specs.parse(tests)
                else:
                    native_rows = native.rows_of(columns, n) if native_rows is None else native_rows
                    found = native.spec_from_row(native_rows[i])
                    if found is None:
                        continue
                    sp = specs.parse(found)
                sp, program = prepare_row(prompt, completion, sp, row_language(columns.get("language"), i))
            except (ValueError, SyntaxError) as exc:
                bad += 1
                self.stats["bad_specs"] += 1
                log.error("%s: row %d has a malformed tests spec (%s); scored None", self.__name__, i, exc)
                continue
            rows.append(i)
            programs.append(program)
            parsed.append(sp)
        if n and not rows and not bad:
            self._say_no_tests(columns)
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


    def _say_no_tests(self, columns: dict) -> None:
        if self.__name__ in _WARNED_NO_TESTS:
            return
        _WARNED_NO_TESTS.add(self.__name__)
        given = sorted(k for k, v in columns.items() if isinstance(v, list | tuple))
        log.warning("%s: no row of this batch has tests, so every row scores None (the reward does not apply). It "
                    "reads the %r column (a rewards.spec JSON string) or a dataset's own test columns (%s); the "
                    "batch has columns %s. Rename or add the test column (said once per process).", self.__name__,
                    self.tests_column, native.describe(), given)


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
             prompts: list | None = None, languages: list | None = None) -> list[Outcome]:
    """Detailed outcomes (per-test categories) for completions against their `tests` specs.

    With `prompts`, a completion that continues a code-stub prompt is run as prompt + completion (`program_for`).
    `languages`: the rows' `language` column, if the dataset has one (`rewards.multilingual`).
    """
    own = evaluator is None
    ev = evaluator or Evaluator()
    try:
        prompts = [None] * len(completions) if prompts is None else prompts
        rows = [prepare_row(p, c, specs.parse(t), row_language(languages, i))
                for i, (p, c, t) in enumerate(zip(prompts, completions, tests, strict=True))]
        return ev.evaluate([program for _, program in rows], [sp for sp, _ in rows])
    finally:
        if own:
            ev.close()


unit_test_reward = UnitTestReward()
all_pass_reward = UnitTestReward(binary=True)
