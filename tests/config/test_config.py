"""Typed configs: defaults, YAML and dotted overrides, and errors that name the key and the fix."""

import dataclasses
from pathlib import Path

import pytest

from rlwork.config import ConfigError, RunConfig, load_config

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("**/*.yaml"))


def test_defaults_are_the_dataclass_defaults():
    cfg = load_config()
    assert cfg == RunConfig()
    assert cfg.model.path == "tiny" and cfg.model.family == "stable-diffcoder"


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("# rlwork train --config run.yaml\nseed: 3\nmodel:\n  dtype: bfloat16\n  device: cpu\n")
    cfg = load_config(path, ["model.dtype=float32", "seed=7", "model.block_size=4"])
    assert (cfg.seed, cfg.model.dtype, cfg.model.block_size) == (7, "float32", 4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["model.famliy=llada"], "unknown config key 'model.famliy': did you mean 'model.family'"),
        (["modle.path=x"], "unknown config key 'modle': did you mean 'model'"),
        (["seed=abc"], "seed='abc': expected an integer"),
        (["seed=true"], "seed=True: expected an integer"),
        (["model.family=gpt2"], "model.family='gpt2': choose one of 'stable-diffcoder'"),
        (["model.trust_remote_code=1"], "model.trust_remote_code=1: expected true or false"),
        (["model.block_size=0"], "model.block_size=0: use a positive block size"),
        (["model=3"], "model: expected a mapping"),
        (["seed"], "write it as key=value"),
        (["seed.x=1"], "seed=.*expected an integer"),
        (["eval.every_steps=-1"], "eval.every_steps=-1: use 0 .off. or a positive step interval"),
        (["eval.training_problems=0"], "eval.training_problems=0: use a positive count, or null"),
        (["eval.report_splits=[]"], r"eval.report_splits=\[\]: name one or more distinct splits"),
        (["eval.report_splits=[iid,iid]"], r"eval.report_splits=\['iid', 'iid'\]: name one or more distinct"),
    ],
)
def test_bad_values_name_the_key_and_the_fix(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_missing_or_broken_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(bad)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_yaml_loads_and_validates(path):
    text = path.read_text()
    assert text.startswith("#"), f"{path.name}: start with a comment giving the exact launch command"
    load_config(path)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_yaml_evaluates_problems_it_does_not_train_on(path):
    from rlwork.data.prompts import eval_source

    cfg = load_config(path)
    assert not eval_source(cfg.data, cfg.eval).training_data, path.name


def test_configs_are_shipped():
    assert CONFIGS, "configs/ has no YAML recipes"


def test_preset_sits_under_yaml_and_overrides(tmp_path):
    cfg = load_config(None, ["algo.preset=espo"])
    assert (cfg.algo.elbo_estimator, cfg.algo.importance_sampling_level, cfg.algo.kl_estimator) == (
        "stratified", "sequence", "k2")
    cfg = load_config(None, ["algo.preset=coupled_grpo", "algo.epsilon=0.3"])
    assert cfg.algo.elbo_estimator == "coupled" and cfg.algo.epsilon == 0.3
    with pytest.raises(ConfigError, match="algo.preset='grpo': choose one of coupled_grpo, espo, d1"):
        load_config(None, ["algo.preset=grpo"])


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["algo.num_generations=1"], "num_generations=1: group advantages need >= 2 completions per prompt"),
        (["rewards.functions=[unit_tests]"], "rewards.weights has 2 values for 1 functions"),
        (["lora.enabled=false"], "algo.beta > 0 with lora.enabled=false"),
        (["eval.ks=[1, 16]"], "each k must be in \\[1, eval.num_samples=8\\]"),
        (["algo.advantage=dr_grpo", "algo.scale_rewards=group"], "dr_grpo is unscaled"),
        (["sampler.threshold=1.5"], "sampler.threshold=1.5"),
        (["algo.negative_weight=-1"], "algo.negative_weight=-1.0: use a value in \\[0, 1\\]"),
        (["algo.likelihood=trace", "model.family=llada"], "Fast-dLLM's prefix cache .* sampler.use_cache=false"),
        (["algo.likelihood=trace", "sampler.top_k=50"], "the KL is infinite there; set algo.beta=0"),
        (["algo.likelihood=trace", "sampler.top_p=0.9"], "the KL is infinite there"),
        (["algo.likelihood=trace", "lora.dropout=0.1"], "set lora.dropout=0"),
        (["algo.preset=d1", "algo.likelihood=trace"], "no mask draws: set algo.prompt_mask_prob=0"),
        (["algo.group_masks=shared", "algo.preset=trace_grpo"], "algo.likelihood=trace draws none"),
        (["algo.group_masks=shared", "algo.preset=espo"], "exact mask counts per row"),
        (["algo.group_masks=same"], "algo.group_masks"),
    ],
)
def test_contradictory_values_fail_at_load(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_trace_preset_and_what_trace_allows():
    cfg = load_config(None, ["algo.preset=trace_grpo"])
    algo = cfg.algo
    assert (algo.likelihood, algo.epsilon, algo.beta, algo.loss_type) == ("trace", 0.2, 0.01, "dr_grpo")
    # exact with the bidirectional families when the sampler recomputes everything; filters without a KL
    load_config(None, ["algo.likelihood=trace", "model.family=dream", "sampler.use_cache=false"])
    load_config(None, ["algo.likelihood=trace", "sampler.top_k=50", "sampler.top_p=0.9", "algo.beta=0"])
    load_config(None, ["algo.likelihood=trace", "sampler.top_k=50", "sampler.temperature=0"])  # greedy: no filter
