"""Fixtures of the RL tests: a tiny config and a module of test rewards importable by dotted path."""

import sys

import pytest

from rlwork.config import load_config

REWARDS = '''
def varied(prompts, completions, **columns):
    """Varies within a group for a random model: fraction of letters among the completion's characters."""
    return [sum(c.isalpha() for c in text) / max(len(text), 1) for text in completions]


def half_flat(prompts, completions, **columns):
    """Flat (0.5) for every completion of prompts with an even length: those groups carry no signal."""
    return [0.5 if len(p) % 2 == 0 else varied([p], [c])[0] for p, c in zip(prompts, completions)]


def broken(prompts, completions, **columns):
    raise RuntimeError("reward service down")
'''


@pytest.fixture()
def reward_module(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(REWARDS)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("my_rewards", None)
    return "my_rewards"


def tiny_cfg(tmp_path, *overrides):
    base = [
        f"output_dir={tmp_path / 'run'}", "train.steps=2", "train.prompts_per_step=2", "train.micro_batch_size=4",
        "algo.num_generations=4", "sampler.max_new_tokens=8", "data.synthetic_train=8", "data.synthetic_heldout=4",
        "tracking.wandb=false", "rewards.functions=[my_rewards:varied]", "rewards.weights=[1.0]",
        "train.learning_rate=0.01", "algo.dynamic_sampling=keep",
    ]
    return load_config(None, [*base, *overrides])


