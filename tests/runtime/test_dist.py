"""Rank helpers and collectives on one process; where a collective's tensor must live."""

import torch

from rlwork.runtime import dist


def test_rank_helpers_on_one_process():
    assert dist.rank() == 0 and dist.world_size() == 1 and dist.is_main_process()
    x = torch.tensor([1.0, 3.0])
    assert torch.equal(dist.all_reduce_mean(x), x)
    assert dist.any_rank(True) and not dist.any_rank(False)
    assert dist.gather_lists([{"row": 0}, {"row": 1}]) == [{"row": 0}, {"row": 1}]
    dist.barrier()


def test_collectives_move_cpu_tensors_to_the_gpu_only_for_nccl(monkeypatch):
    cpu = torch.device("cpu")
    assert dist.collective_device("gloo", cpu) == cpu
    assert dist.collective_device("nccl", torch.device("cuda", 1)) == torch.device("cuda", 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)  # no GPU here: the choice, not the copy
    assert dist.collective_device("nccl", cpu) == torch.device("cuda", 3)
