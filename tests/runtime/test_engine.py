"""Engine: LoRA wrapping, the reference policy, torch vs DeepSpeed steps, non-finite skipping, 2-rank ZeRO."""

import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rlwork.models.lm import DiffusionLM
from rlwork.runtime import dist
from rlwork.runtime import engine as eng

ROOT = Path(__file__).resolve().parents[2]


def toy_batch(seed: int, n: int = 2, t: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(8, 1000, (n, t), generator=gen)
    targets = torch.randint(8, 1000, (n, t), generator=gen)
    return ids, targets


def toy_loss(lm: DiffusionLM, module: torch.nn.Module, ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits, _ = lm.forward(ids, model=module)
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())


def lora_copy(tiny_lm: DiffusionLM, seed: int = 0, r: int = 4) -> torch.nn.Module:
    """A fresh LoRA model over a private copy of the tiny coder (the session fixture stays untouched)."""
    torch.manual_seed(seed)
    return eng.apply_lora(copy.deepcopy(tiny_lm.model), r=r, alpha=8, dropout=0.0)


def adapter_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_lora_trains_only_the_adapter(tiny_lm):
    model = lora_copy(tiny_lm)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    targeted = {n.split(".")[-4] for n in trainable if n.endswith("lora_A.default.weight")}
    assert targeted == set(eng.LORA_TARGETS)

    full = eng.apply_lora(copy.deepcopy(tiny_lm.model), r=0, alpha=0)
    assert all(p.requires_grad for p in full.parameters())
    with pytest.raises(ValueError, match="positive rank"):
        eng.apply_lora(copy.deepcopy(tiny_lm.model), r=-1, alpha=8)


def test_lora_step_keeps_base_and_reference_is_exact_base(tiny_lm):
    model = lora_copy(tiny_lm)
    base_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    engine = eng.TrainEngine.create(model, lr=1e-2)
    ids, targets = toy_batch(0)
    with torch.no_grad():
        base_logits, _ = tiny_lm.forward(ids)
    engine.backward(toy_loss(tiny_lm, engine.module, ids, targets))
    result = engine.step()
    assert result is not None and result.applied and result.grad_norm > 0
    for name, param in model.named_parameters():
        if not param.requires_grad:
            assert torch.equal(param, base_before[name]), name
    ref = eng.RefPolicy.build(model, beta=0.04)
    with ref.context() as ref_model:
        ref_logits, _ = tiny_lm.forward(ids, model=ref_model)
    assert torch.equal(ref_logits, base_logits)
    with eng.reference_context(model), torch.no_grad():
        assert torch.equal(tiny_lm.forward(ids, model=model)[0], base_logits)
    with torch.no_grad():
        policy_logits, _ = tiny_lm.forward(ids, model=model)
    assert (policy_logits - base_logits).abs().max() > 1e-4


def test_reference_for_full_fine_tuning_is_explicit(tiny_lm):
    model = eng.apply_lora(copy.deepcopy(tiny_lm.model), r=0, alpha=0)
    assert eng.RefPolicy.build(model, beta=0.0) is None
    with pytest.raises(ValueError, match="frozen copy"):
        eng.RefPolicy.build(model, beta=0.01)
    with pytest.raises(ValueError, match="LoRA"):
        eng.reference_context(model)
    ref = eng.RefPolicy.build(model, beta=0.01, copy_for_full_ft=True)
    engine = eng.TrainEngine.create(model, lr=1e-2)
    ids, targets = toy_batch(1)
    with torch.no_grad():
        before, _ = tiny_lm.forward(ids, model=model)
    engine.backward(toy_loss(tiny_lm, engine.module, ids, targets))
    assert engine.step().applied
    with ref.context() as ref_model, torch.no_grad():
        assert torch.equal(tiny_lm.forward(ids, model=ref_model)[0], before)
        assert not torch.equal(tiny_lm.forward(ids, model=model)[0], before)


@pytest.mark.parametrize("poison", ["nan_loss", "inf_grad"])
def test_non_finite_update_is_skipped(tiny_lm, poison):
    model = lora_copy(tiny_lm)
    engine = eng.TrainEngine.create(model, lr=1e-2)
    ids, targets = toy_batch(2)
    engine.backward(toy_loss(tiny_lm, engine.module, ids, targets))
    assert engine.step().applied
    weights, opt_state = adapter_state(model), copy.deepcopy(engine.optimizer.state_dict())

    logits, _ = tiny_lm.forward(ids, model=engine.module)
    if poison == "nan_loss":
        loss = logits.mean() * float("nan")
    else:  # finite loss (0), infinite gradient: d sqrt(x)/dx at 0
        loss = torch.sqrt((logits - logits.detach()).sum())
        assert torch.isfinite(loss)
    assert engine.backward(loss) is (poison != "nan_loss")
    result = engine.step()
    assert not result.applied and not torch.isfinite(torch.tensor(result.grad_norm))
    assert engine.skipped_steps == 1
    for name, value in adapter_state(model).items():
        assert torch.equal(value, weights[name]), name
    state = engine.optimizer.state_dict()["state"]
    assert all(torch.equal(state[k]["exp_avg"], opt_state["state"][k]["exp_avg"]) for k in state)
    assert all(p.grad is None for p in engine.trainable_parameters())
    engine.backward(toy_loss(tiny_lm, engine.module, ids, targets))
    assert engine.step().applied


def test_gradient_accumulation_matches_one_big_batch(tiny_lm):
    ids, targets = toy_batch(3, n=4)
    big = eng.TrainEngine.create(lora_copy(tiny_lm), lr=1e-3)
    big.backward(toy_loss(tiny_lm, big.module, ids, targets))
    big_result = big.step()
    acc = eng.TrainEngine.create(lora_copy(tiny_lm), lr=1e-3, gradient_accumulation_steps=2)
    acc.backward(toy_loss(tiny_lm, acc.module, ids[:2], targets[:2]))
    assert acc.step() is None
    acc.backward(toy_loss(tiny_lm, acc.module, ids[2:], targets[2:]))
    acc_result = acc.step()
    assert acc_result.applied
    assert acc_result.grad_norm == pytest.approx(big_result.grad_norm, rel=1e-4)
    big_w, acc_w = adapter_state(big.model), adapter_state(acc.model)
    for name in big_w:
        torch.testing.assert_close(acc_w[name], big_w[name], rtol=1e-4, atol=1e-6)


def test_engine_arguments_are_validated(tiny_lm, monkeypatch):
    with pytest.raises(ValueError, match="no trainable parameters"):
        eng.TrainEngine.create(copy.deepcopy(tiny_lm.model).requires_grad_(False), lr=1e-3)
    with pytest.raises(ValueError, match="max_grad_norm"):
        eng.TrainEngine.create(lora_copy(tiny_lm), lr=1e-3, max_grad_norm=0.0)
    with pytest.raises(ValueError, match="backend"):
        eng.TrainEngine.create(lora_copy(tiny_lm), lr=1e-3, backend="fsdp")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="single-process"):
        eng.TrainEngine.create(lora_copy(tiny_lm), lr=1e-3)


@pytest.fixture(scope="module")
def ds_engine_pair(tiny_lm):
    """A torch and a DeepSpeed ZeRO-2 engine over identical LoRA copies (in this process, world size 1)."""
    start = time.perf_counter()
    model = lora_copy(tiny_lm, seed=5)
    ds = eng.TrainEngine.create(copy.deepcopy(model), backend="deepspeed", lr=1e-3, gradient_accumulation_steps=2,
                                max_grad_norm=0.05, deepspeed_config_path="zero2")
    print(f"deepspeed ZeRO-2 init: {time.perf_counter() - start:.1f}s")
    plain = eng.TrainEngine.create(model, lr=1e-3, gradient_accumulation_steps=2, max_grad_norm=0.05)
    return plain, ds


def test_deepspeed_zero2_matches_torch(tiny_lm, ds_engine_pair):
    plain, ds = ds_engine_pair
    assert ds.zero_stage == 2 and dist.world_size() == 1 and dist.is_main_process()
    ids, targets = toy_batch(4, n=4)
    results = {}
    for name, engine in (("torch", plain), ("deepspeed", ds)):
        for micro in range(2):
            rows = slice(2 * micro, 2 * micro + 2)
            engine.backward(toy_loss(tiny_lm, engine.module, ids[rows], targets[rows]))
            results[name] = engine.step()
            assert (results[name] is None) == (micro == 0)
    assert results["torch"].applied and results["deepspeed"].applied
    # clipping is active (norm > 0.05), so equal weights also check DeepSpeed clips like torch
    assert results["torch"].grad_norm > 0.05
    assert results["deepspeed"].grad_norm == pytest.approx(results["torch"].grad_norm, rel=1e-4)
    plain_w, ds_w = adapter_state(plain.model), adapter_state(ds.model)
    assert plain_w.keys() == ds_w.keys()
    for name in plain_w:
        torch.testing.assert_close(ds_w[name], plain_w[name], rtol=1e-4, atol=1e-6)


def test_deepspeed_skips_non_finite_loss(tiny_lm, ds_engine_pair):
    _, ds = ds_engine_pair
    weights = adapter_state(ds.model)
    ids, targets = toy_batch(6, n=2)
    skipped = ds.skipped_steps
    for micro in range(2):
        loss = toy_loss(tiny_lm, ds.module, ids, targets)
        assert ds.backward(loss * float("inf") if micro == 1 else loss) is (micro == 0)
        result = ds.step()
    assert not result.applied and ds.skipped_steps == skipped + 1
    for name, value in adapter_state(ds.model).items():
        assert torch.equal(value, weights[name]), name
    for _ in range(2):
        ds.backward(toy_loss(tiny_lm, ds.module, ids, targets))
        result = ds.step()
    assert result.applied and not torch.equal(adapter_state(ds.model)[name], weights[name])


@pytest.mark.slow  # the first run compiles DeepSpeedCPUAdam: ~3 min on 2 busy cores (then cached, ~6 s)
@pytest.mark.parametrize("name", ["zero2_offload", "zero3_offload"])
def test_deepspeed_offload_matches_torch(tiny_lm, name):
    model = lora_copy(tiny_lm, seed=7)
    plain = eng.TrainEngine.create(copy.deepcopy(model), lr=1e-3, max_grad_norm=0.05)
    ds = eng.TrainEngine.create(model, backend="deepspeed", lr=1e-3, max_grad_norm=0.05, deepspeed_config_path=name)
    assert type(ds.module.optimizer.optimizer).__name__ == "DeepSpeedCPUAdam"
    ids, targets = toy_batch(8)
    for engine in (plain, ds):
        engine.backward(toy_loss(tiny_lm, engine.module, ids, targets))
        assert engine.step().applied
    with eng.gathered_parameters(ds):
        ds_w = adapter_state(ds.model)
    for name_, value in adapter_state(plain.model).items():
        torch.testing.assert_close(ds_w[name_], value, rtol=1e-4, atol=1e-6)


# 20-30 s each on 2 shared cores (two fresh interpreters importing torch/transformers/deepspeed): opt-in, so the
# default run of this file and test_checkpoint.py stays under a minute. ZeRO-2 on one process runs by default.
@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_two_ranks_agree_with_one_process(tmp_path, stage):
    """torchrun, 2 gloo ranks, one LoRA step: same adapter on both ranks and as one process fed all rows."""
    out = tmp_path / "result.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)  # this pytest process may have set single-process defaults
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(dist._free_port()), str(ROOT / "tests" / "scripts" / "ds_two_ranks.py"), str(stage), str(out)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    print(f"2-rank ZeRO-{stage}: {time.perf_counter() - start:.1f}s")
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["ranks_identical"], result
    assert result["max_diff_vs_single"] < 1e-5, result
    assert result["adapter_changed"], result
    assert result["grad_norm"] == pytest.approx(result["single_grad_norm"], rel=1e-5), result
    assert result["gathered_forward_max_diff"] < 1e-5, result
    assert result["partitioned"] == (stage == 3) and result["stays_gathered"], result
    # ZeRO checkpoint: a step after saving moves the adapter, loading brings back exactly the saved one
    assert result["moved_after_save"] > 0 and result["restored_max_diff"] == 0, result
    assert result["saved_adapter_max_diff"] == 0 and result["resumed_step"] == 1, result
    assert result["ref_max_diff"] == 0 and result["policy_moved"] > 1e-4, result  # adapter-disabled reference
