"""The reward contract's optional extension: what a reward may return besides TRL's list of scores."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Detailed:
    """What a reward's `detailed(prompts, completions, **columns)` returns (see `rewards.registry`).

    scores: N values, None = does not apply (as the reward's own call returns them).
    details: N per-row details, e.g. the sandbox `Outcome` of each row (None where the reward did not run it).
    """

    scores: list
    details: list
