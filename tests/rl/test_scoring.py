"""Phase 2 through config: parameterised rewards (DAPO's soft over-length penalty) measure completion tokens."""

import math

import pytest
import torch

from rlwork.config import ConfigError, load_config
from rlwork.rl.scoring import RewardScorer, completion_token_ids

OVERLONG = ["rewards.functions=[format,overlong]", "rewards.weights=[1.0,0.5]",
            "rewards.kwargs={overlong: {max_length: 8, cache_length: 4}}"]


def test_the_length_penalty_is_configured_and_counts_tokens():
    scorer = RewardScorer(load_config(None, OVERLONG).rewards)
    completions = ["```python\nx\n```", "plain", "plain"]
    ids = [[7] * 3, [7] * 6, [7] * 20]  # 3 tokens: no penalty; 6: half way down the ramp; 20: past max_length
    scores = scorer.score(["p"] * 3, completions, [{"task_id": str(i)} for i in range(3)], ids)
    assert scores.names == ("format", "overlong")
    torch.testing.assert_close(scores.per_func[:, 1], torch.tensor([0.0, -0.5, -1.0]))
    torch.testing.assert_close(scores.total, torch.tensor([1.0, -0.25, -0.5]))  # 1 * format + 0.5 * overlong


def test_completion_token_ids_are_the_real_tokens():
    from types import SimpleNamespace

    rollout = SimpleNamespace(completion_ids=torch.tensor([[5, 6, 2, 1], [7, 2, 1, 1]]),
                              completion_mask=torch.tensor([[True, True, True, False], [True, True, False, False]]))
    assert completion_token_ids(rollout) == [[5, 6, 2], [7, 2]]


@pytest.mark.parametrize("overrides,message", [
    (["rewards.functions=[format,overlong]", "rewards.weights=[1.0,0.5]"],
     r"OverlongPenalty\(max_length, cache_length\).*rewards.kwargs"),  # no parameters
    (["rewards.kwargs={overlong: {max_length: 8, cache_length: 4}}"], "which rewards.functions"),  # not in use
    (["rewards.functions=[overlong]", "rewards.weights=[1.0]", "rewards.kwargs={overlong: 3}"], "expected a mapping"),
])
def test_length_penalty_configuration_errors_name_the_key(overrides, message):
    with pytest.raises((ConfigError, ValueError), match=message):
        RewardScorer(load_config(None, overrides).rewards)


def test_an_rl_step_with_the_length_penalty_scores_every_row(tmp_path):
    from rlwork.rl.trainer import train

    cfg = load_config(None, [*OVERLONG, f"output_dir={tmp_path / 'run'}", "train.steps=1", "train.prompts_per_step=2",
                             "algo.num_generations=2", "sampler.max_new_tokens=12", "data.synthetic_train=4",
                             "data.synthetic_heldout=2", "tracking.wandb=false", "train.micro_batch_size=4"])
    metrics = train(cfg)
    assert math.isfinite(metrics["reward/overlong/mean"]) and metrics["reward/overlong/mean"] <= 0
    assert metrics["reward/frac_unscorable"] == 0.0
