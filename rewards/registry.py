"""Names -> reward functions, user rewards by dotted import path, and scoring that survives a raising reward.

Every reward follows TRL's contract, `fn(prompts, completions, **columns) -> list[float | None]`. Two optional
methods let a reward give a trainer more, without the trainer naming it:

- `detailed(prompts, completions, **columns) -> Detailed`: the same scores plus one detail per row (the unit-test
  rewards give the sandbox's per-test `Outcome`); `score_all` collects them under `Scores.details`.
- `with_sandbox(timeout=..., max_concurrency=..., allow_weak=...)`: a copy that runs its programs with these
  sandbox settings; `get_reward(name, sandbox=...)` applies them to every reward that has the method.
"""

import importlib
import logging
import math
from dataclasses import dataclass, field

from rewards.contract import Detailed  # noqa: F401 (re-exported: part of the contract)
from rewards.editing import edit_size_chars_reward, edit_size_reward
from rewards.shaping import FormatReward, OverlongPenalty, format_reward
from rewards.unit_tests import all_pass_reward, unit_test_reward

log = logging.getLogger("rewards.registry")

REWARD_FNS = {
    "unit_tests": unit_test_reward,
    "unit_tests_binary": all_pass_reward,
    "format": format_reward,
    "format_think": FormatReward(require_think=True),
    "edit_size": edit_size_reward,
    "edit_size_chars": edit_size_chars_reward,
}

REWARD_CLASSES = {
    "overlong": OverlongPenalty,
}
"""Built-in rewards that take parameters: name -> class, built with the keyword arguments given for the name."""


def get_reward(name: str, sandbox: dict | None = None, kwargs: dict | None = None):
    """A built-in reward by name, or a user reward by import path (`pkg.mod:fn` or `pkg.mod.fn`).

    `sandbox` (keyword arguments of `with_sandbox`) configures a reward that runs programs; others ignore it.
    `kwargs` build a parameterised reward: a class from `REWARD_CLASSES` or one named by import path (a class is
    instantiated with them, never called as the reward); a plain function takes none.

    Example:
        >>> get_reward("format").__name__
        'format'
        >>> get_reward("overlong", kwargs={"max_length": 10, "cache_length": 4})([""], ["a" * 8])
        [-0.5]
    """
    fn = _lookup(name, kwargs)
    if sandbox is not None and callable(getattr(fn, "with_sandbox", None)):
        fn = fn.with_sandbox(**sandbox)
    return fn


def _lookup(name: str, kwargs: dict | None):
    if name in REWARD_CLASSES:
        return _build(name, REWARD_CLASSES[name], kwargs)
    if name in REWARD_FNS:
        fn = REWARD_FNS[name]
    elif ":" in name or "." in name:
        module, _, attr = name.partition(":") if ":" in name else name.rpartition(".")
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"reward {name!r}: cannot import {attr!r} from {module!r} ({exc})") from exc
        if isinstance(fn, type):
            return _build(name, fn, kwargs)
        if not callable(fn):
            raise ValueError(f"reward {name!r}: {type(fn).__name__} is not callable")
    else:
        raise ValueError(f"unknown reward {name!r}; built-in rewards are {sorted([*REWARD_FNS, *REWARD_CLASSES])}, "
                         "or give an import path like 'my_pkg.my_rewards:my_reward'")
    if kwargs:
        raise ValueError(f"reward {name!r} is a function and takes no parameters; got {sorted(kwargs)} "
                         f"(rewards.kwargs.{name} in an rlwork recipe): remove them")
    return fn


def _build(name: str, cls: type, kwargs: dict | None):
    """A parameterised reward: `cls(**kwargs)`, with an error that names what to pass when they do not fit."""
    import inspect

    try:
        return cls(**(kwargs or {}))
    except TypeError as exc:
        params = [p for p in inspect.signature(cls).parameters if p not in ("self", "args", "kwargs")]
        raise ValueError(f"reward {name!r} is built from {cls.__name__}({', '.join(params)}) and its parameters do "
                         f"not fit ({exc}): give them as keyword arguments (rewards.kwargs.{name} in an rlwork "
                         f"recipe, e.g. rewards.kwargs={{{name}: {{{', '.join(f'{p}: ...' for p in params)}}}}})"
                         ) from None


def reward_name(fn) -> str:
    return getattr(fn, "__name__", type(fn).__name__)


@dataclass
class Scores:
    """R reward functions x N rows. NaN = does not apply or the reward raised."""

    per_reward: dict[str, list[float]]
    total: list[float]
    """Weighted sum over the rewards that apply (NaN if none does), like TRL's nansum."""
    errors: dict[str, str] = field(default_factory=dict)
    """reward name -> the error it raised in this call."""
    details: dict[str, list] = field(default_factory=dict)
    """reward name -> N per-row details, for the rewards with a `detailed` method that did not raise."""


ERRORS: dict[str, int] = {}
"""reward name -> number of calls that raised, over the life of the process."""
_WARNED_ALL_NONE: set[str] = set()
"""Reward names that already returned None for a whole batch in this process (said once)."""


def score_all(reward_fns: list, weights: list[float] | None, prompts: list, completions: list,
              columns: dict) -> Scores:
    """Run every reward on the batch; a reward that raises (or returns the wrong length) gets NaN for its
    rows, is counted in `ERRORS` and logged with its name, and the others still count.

    Example:
        >>> def broken(prompts, completions, **kw):
        ...     raise RuntimeError("boom")
        >>> s = score_all([format_reward, broken], None, ["p"], ["```python\\nx\\n```"], {})
        >>> s.total, s.per_reward["broken"], s.errors["broken"]
        ([1.0], [nan], 'RuntimeError: boom')
    """
    weights = [1.0] * len(reward_fns) if weights is None else list(weights)
    if len(weights) != len(reward_fns):
        raise ValueError(f"weights: {len(weights)} given for {len(reward_fns)} rewards; give one per reward")
    n = len(completions)
    per, errors, details = {}, {}, {}
    for fn in reward_fns:
        name = reward_name(fn)
        try:
            if callable(getattr(fn, "detailed", None)):
                out = fn.detailed(prompts, completions, **columns)
                values = list(out.scores)
                if len(out.details) != n:
                    raise ValueError(f"returned {len(out.details)} details for {n} completions")
                details[name] = list(out.details)
            else:
                values = list(fn(prompts, completions, **columns))
            if len(values) != n:
                raise ValueError(f"returned {len(values)} values for {n} completions")
            per[name] = [math.nan if v is None else float(v) for v in values]
            if n and all(v is None for v in values) and name not in _WARNED_ALL_NONE:
                _WARNED_ALL_NONE.add(name)
                given = sorted(k for k, v in columns.items() if isinstance(v, list | tuple))
                log.warning("reward %r returned None for all %d rows of a batch: it applies to none of them, so it "
                            "adds nothing to the reward. The batch has columns %s; check that the reward finds the "
                            "columns it reads (said once per reward and process).", name, n, given)
        except Exception as exc:  # a broken reward must not stop the run: isolate it and say so
            errors[name] = f"{type(exc).__name__}: {exc}"
            ERRORS[name] = ERRORS.get(name, 0) + 1
            first = ERRORS[name] == 1  # the traceback once per reward and process; later errors one line each
            log.error("reward %r raised %s; its %d rows are NaN (%d errors so far)", name, errors[name], n,
                      ERRORS[name], exc_info=first)
            per[name] = [math.nan] * n
    total = weighted_total([per[reward_name(fn)] for fn in reward_fns], weights)
    return Scores(per, total, errors, details)


def weighted_total(per_reward: list[list[float]], weights: list[float]) -> list[float]:
    """Row-wise weighted sum of R reward columns, TRL's nansum convention: a NaN (does not apply) contributes 0, and
    a row is NaN only when every reward is NaN for it.

    >>> weighted_total([[1.0, float("nan")], [2.0, 3.0]], [1.0, 0.5])
    [2.0, 1.5]
    """
    total = []
    for column in zip(*per_reward, strict=True):
        parts = [w * v for v, w in zip(column, weights, strict=True) if not math.isnan(v)]
        total.append(sum(parts) if parts else math.nan)
    return total
