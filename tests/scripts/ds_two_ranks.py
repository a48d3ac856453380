"""Two-rank DeepSpeed check, run by tests/test_engine.py under `torchrun --nproc_per_node 2`.

usage: torchrun --nproc_per_node 2 tests/scripts/ds_two_ranks.py STAGE OUT_JSON

One LoRA step with gradient accumulation 2 (one row per rank per micro-batch) against a torch engine fed the same
4 rows in one process; a forward inside `gathered_parameters`; a checkpoint save/load under this ZeRO stage.
Rank 0 writes the findings to OUT_JSON.
"""

import copy
import json
import os
import sys
from pathlib import Path
from unittest import mock

import torch
from safetensors.torch import load_file

from rlwork.models.lm import load_diffusion_lm
from rlwork.runtime import checkpoint as ckpt
from rlwork.runtime import dist
from rlwork.runtime import engine as eng


def loss_of(lm, module, ids, targets):
    logits, _ = lm.forward(ids, model=module)
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())


def adapter(engine):
    with eng.gathered_parameters(engine):
        return {n: p.detach().clone() for n, p in engine.named_trainable_parameters()}


def max_diff(a, b):
    return max(float((a[n] - b[n]).abs().max()) for n in a)


def main(stage: int, out: Path) -> None:
    dist.init_distributed()
    rank, world = dist.rank(), dist.world_size()
    assert world == 2, world
    lm = load_diffusion_lm("tiny", "stable-diffcoder")
    torch.manual_seed(0)
    model = eng.apply_lora(lm.model, r=4, alpha=8)
    gen = torch.Generator().manual_seed(4)
    ids, targets = torch.randint(8, 1000, (4, 16), generator=gen), torch.randint(8, 1000, (4, 16), generator=gen)
    adapter_start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    kwargs = dict(lr=1e-3, gradient_accumulation_steps=2, max_grad_norm=0.05)

    # the one-process reference, computed on every rank; the torch backend refuses a multi-rank launch on purpose
    with mock.patch.dict(os.environ, {"WORLD_SIZE": "1"}):
        single = eng.TrainEngine.create(copy.deepcopy(model), **kwargs)
    for micro in range(2):
        single.backward(loss_of(lm, single.module, ids[2 * micro:2 * micro + 2], targets[2 * micro:2 * micro + 2]))
        single_result = single.step()

    ds = eng.TrainEngine.create(model, backend="deepspeed", micro_batch_size=1,
                                deepspeed_config_path=f"zero{stage}", **kwargs)
    with torch.no_grad():
        plain_logits, _ = lm.forward(ids, model=ds.module)
        with eng.gathered_parameters(ds):
            gathered = [lm.forward(ids, model=ds.module)[0] for _ in range(2)]
            # the forwards inside must not re-partition: every ZeRO-3 parameter still holds its full tensor
            stays_gathered = all(p.numel() == p.ds_numel for p in model.parameters() if hasattr(p, "ds_numel"))
        after_logits, _ = lm.forward(ids, model=ds.module)
    gathered_diff = max(float((g - plain_logits).abs().max()) for g in [*gathered, after_logits])

    for micro in range(2):
        row = slice(2 * micro + rank, 2 * micro + rank + 1)
        ds.backward(loss_of(lm, ds.module, ids[row], targets[row]))
        result = ds.step()
    weights = adapter(ds)
    ref = eng.RefPolicy.build(model, beta=0.04)
    with torch.no_grad():
        with ref.context(ds.module) as ref_module:  # the LoRA B matrices start at 0: base == initial policy
            ref_diff = float((lm.forward(ids, model=ref_module)[0] - plain_logits).abs().max())
        policy_moved = float((lm.forward(ids, model=ds.module)[0] - plain_logits).abs().max())
    box = [weights]
    torch.distributed.broadcast_object_list(box, src=1)  # rank 1's weights on every rank
    others = box[0]
    identical = all(torch.equal(weights[n], others[n]) for n in weights)
    identical = bool(dist.all_reduce_mean(torch.tensor(float(identical))) == 1.0)
    vs_single = max_diff(weights, {n: p.detach() for n, p in single.named_trainable_parameters()})

    run = out.parent / f"run-zero{stage}"
    ckpt.save_checkpoint(run, 1, ds, None, {"row": 4}, {"stage": stage})
    for _ in range(2):
        ds.backward(loss_of(lm, ds.module, ids[:1], targets[:1]))
        ds.step()
    moved = max_diff(adapter(ds), weights)
    step, _, data_state = ckpt.load_checkpoint(run, ds)
    restored = max_diff(adapter(ds), weights)
    saved = load_file(run / "checkpoints" / "step_000001" / "adapter" / "adapter_model.safetensors")
    saved_diff = max(float((saved[n.replace(".default", "")] - w).abs().max()) for n, w in weights.items())
    if rank == 0:
        out.write_text(json.dumps({
            "stage": stage, "ranks_identical": identical, "max_diff_vs_single": vs_single,
            "grad_norm": result.grad_norm, "single_grad_norm": single_result.grad_norm,
            "adapter_changed": max_diff(weights, adapter_start) > 0,
            "gathered_forward_max_diff": gathered_diff,
            "stays_gathered": stays_gathered, "moved_after_save": moved,
            "partitioned": any(hasattr(p, "ds_numel") for p in model.parameters()),
            "restored_max_diff": restored, "saved_adapter_max_diff": saved_diff,
            "resumed_step": step, "data_state": data_state, "ref_max_diff": ref_diff, "policy_moved": policy_moved,
        }, indent=2))
    dist.barrier()


if __name__ == "__main__":
    main(int(sys.argv[1]), Path(sys.argv[2]))
