"""Prompt streams: seeded order, epochs, exact resume; splits load with clear errors."""

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
    with pytest.raises(ValueError, match="unknown dataset adapter"):
        load_split(DataConfig(dataset="nope"), "train", seed=0)
