"""TRL's names for the quantities both log: every name we alias is one TRL 1.16 really logs, and W&B receives them."""

import inspect
import math

import pytest

from rlwork.runtime.trl_names import PER_REWARD, STEP_KEY, TRL_NAMES, trl_aliases


def trl_source() -> str:
    trl = pytest.importorskip("trl")
    from transformers import Trainer

    return "".join(inspect.getsource(cls) for cls in (trl.GRPOTrainer, trl.SFTTrainer, Trainer))


@pytest.mark.parametrize("ours", sorted(TRL_NAMES))
def test_each_alias_is_a_name_trl_logs(ours):
    name = TRL_NAMES[ours]
    name = name[0] if isinstance(name, tuple) else name
    assert f'"{name}"' in trl_source(), f"TRL does not log {name!r} (for our {ours!r}): update TRL_NAMES"


def test_per_reward_names_follow_trl():
    source = trl_source()
    assert 'f"rewards/{reward_func_name}/mean"' in source and 'f"rewards/{reward_func_name}/std"' in source
    assert PER_REWARD.match("reward/unit_tests/std") and not PER_REWARD.match("reward/frac_zero_std")


def test_aliases_of_a_step():
    metrics = {"reward/mean": 0.25, "reward/unit_tests/mean": 0.5, "reward/format/std": 0.1, "policy/kl": 0.01,
               "completion/eos_frac": 0.75, "elbo/std": 3.0, "sandbox/passed_frac": 0.5}
    assert trl_aliases(metrics, 9) == {
        "train/reward": 0.25, "train/rewards/unit_tests/mean": 0.5, "train/rewards/format/std": 0.1,
        "train/kl": 0.01, "train/completions/clipped_ratio": 0.25, STEP_KEY: 10}
    assert math.isnan(trl_aliases({"policy/kl": math.nan}, 0)["train/kl"])


def test_the_wandb_tracker_logs_trl_names_beside_ours(tmp_path, monkeypatch):
    from rlwork.runtime.tracking import WandbTracker

    monkeypatch.setenv("WANDB_MODE", "offline")
    tracker = WandbTracker("rlwork-test", tmp_path)
    logged = []
    monkeypatch.setattr(tracker.run, "log", lambda data, step: logged.append((dict(data), step)))
    tracker.log({"reward/mean": 0.5, "reward/unit_tests/mean": 0.5, "policy/entropy": 1.5}, step=2)
    tracker.finish()
    assert logged == [({"reward/mean": 0.5, "reward/unit_tests/mean": 0.5, "policy/entropy": 1.5, "train/reward": 0.5,
                        "train/rewards/unit_tests/mean": 0.5, "train/entropy": 1.5, STEP_KEY: 3}, 2)]
