"""Plain data -> typed dataclasses and back: override parsing, deep merge, type coercion, the round trip."""

import pytest

from rlwork.config import ConfigError, RunConfig, load_config
from rlwork.config.typed import build, merge, parse_overrides, read_yaml, to_dict


def test_overrides_parse_yaml_scalars_and_lists():
    assert parse_overrides(["a.b=0.01", "a.c=[1, 2]", "d=null", "e=hello"]) == {
        "a": {"b": 0.01, "c": [1, 2]}, "d": None, "e": "hello"
    }


def test_exponent_without_dot_is_a_number():
    assert load_config(None, ["train.learning_rate=3e-3"]).train.learning_rate == 0.003
    with pytest.raises(ConfigError, match="train.learning_rate='fast': expected a number"):
        load_config(None, ["train.learning_rate=fast"])


def test_round_trip_through_plain_dict():
    cfg = load_config(None, ["seed=5"])
    assert build(RunConfig, to_dict(cfg)) == cfg


def test_merge_is_deep_and_leaves_its_inputs_alone():
    base = {"algo": {"beta": 0.01, "epsilon": 0.2}, "seed": 1}
    update = {"algo": {"beta": 0.0}, "output_dir": "runs/x"}
    assert merge(base, update) == {"algo": {"beta": 0.0, "epsilon": 0.2}, "seed": 1, "output_dir": "runs/x"}
    assert base == {"algo": {"beta": 0.01, "epsilon": 0.2}, "seed": 1} and update["algo"] == {"beta": 0.0}


def test_read_yaml_of_nothing_or_an_empty_file_is_empty(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# only a comment\n")
    assert read_yaml(None) == {} and read_yaml(empty) == {}
