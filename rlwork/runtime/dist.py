"""torch.distributed helpers: join the process group, ask for rank and world size, and the few collectives the
trainers need (mean, sum/min/max, any, gather of Python objects).

Every helper also works without a process group (one process is rank 0 of 1 and each collective is the
identity), so callers use them unconditionally. Nothing here knows about models or optimizers.

Launch: one process needs no launcher (`init_distributed` sets `RANK=0 WORLD_SIZE=1 ...` defaults, without which
DeepSpeed looks for mpi4py). Several processes: `torchrun --nproc_per_node N ...`, or `deepspeed --num_gpus N ...`
and `deepspeed --hostfile hosts ...` across nodes. Checkpoints assume a file system shared by all ranks.
"""

from __future__ import annotations

import os
import socket
import sys

import torch
from torch import Tensor


def init_distributed(backend: str | None = None) -> None:
    """Join (or create) the process group. Idempotent.

    Without a launcher, sets the single-process defaults (`RANK=0 WORLD_SIZE=1 LOCAL_RANK=0 MASTER_ADDR=127.0.0.1`,
    a free `MASTER_PORT`). Backend: nccl when CUDA is available, gloo otherwise.
    """
    import torch.distributed as dist

    if dist.is_initialized():
        return
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        if backend == "nccl":
            torch.cuda.set_device(0)
        # One process needs no rendezvous: an in-memory store cannot lose a race for a TCP port (seen in CI:
        # EADDRINUSE when another process took the "free" port between probing and binding).
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    elif backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    _clear_stale_build_locks()
    import deepspeed

    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)


def ranks_all_local(env: dict[str, str] | None = None) -> bool:
    """Whether every rank runs on this machine: the world size equals the local one (torchrun's
    `LOCAL_WORLD_SIZE`, the DeepSpeed launcher's `LOCAL_SIZE`). Unknown counts as no."""
    env = os.environ if env is None else env
    local = env.get("LOCAL_WORLD_SIZE") or env.get("LOCAL_SIZE")
    return local is not None and env.get("WORLD_SIZE") == local


def _clear_stale_build_locks() -> None:
    """DeepSpeed compiles ops as it starts; a lock that a killed compile left would make it wait forever."""
    from rlwork.runtime.build_locks import clear_stale_build_locks, extensions_root

    for lock in clear_stale_build_locks(extensions_root(), ranks_all_local=ranks_all_local()):
        print(f"rlwork: removed {lock}, the build lock of a compile that was killed before it finished (no "
              "process holds it); DeepSpeed would otherwise wait for it forever", file=sys.stderr, flush=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _dist_ready() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if _dist_ready() else 0


def world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if _dist_ready() else 1


def is_main_process() -> bool:
    return rank() == 0


def barrier() -> None:
    import torch.distributed as dist

    if _dist_ready() and world_size() > 1:
        dist.barrier()


def all_reduce_mean(tensor: Tensor) -> Tensor:
    """Mean over ranks (a new tensor; the input is not modified). Identity on one process."""
    import torch.distributed as dist

    out = tensor.detach().clone()
    if _dist_ready() and world_size() > 1:
        home = out.device
        out = out.to(collective_device(dist.get_backend(), home))
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        out = (out / world_size()).to(home)
    return out


def all_reduce(tensor: Tensor, op: str = "sum") -> Tensor:
    """Elementwise "sum", "min" or "max" over ranks (a new tensor; the input is not modified). Identity on one
    process."""
    import torch.distributed as dist

    ops = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}
    if op not in ops:
        raise ValueError(f"op={op!r}: choose one of {', '.join(ops)}")
    out = tensor.detach().clone()
    if _dist_ready() and world_size() > 1:
        home = out.device
        out = out.to(collective_device(dist.get_backend(), home))
        dist.all_reduce(out, op=ops[op])
        out = out.to(home)
    return out


def any_rank(flag: bool) -> bool:
    """Whether `flag` is true on at least one rank (every rank gets the same answer)."""
    return bool(all_reduce_mean(torch.tensor([float(flag)])) > 0)


def collective_device(backend: str, device: torch.device) -> torch.device:
    """Where a tensor must live for a collective: NCCL reduces CUDA tensors only (a CPU flag or metric goes to
    this rank's current GPU and back); gloo takes tensors where they are."""
    if backend == "nccl" and device.type != "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return device


def gather_lists(items: list) -> list:
    """Every rank's list (picklable items), concatenated in rank order on every rank. Identity on one process."""
    import torch.distributed as dist

    if not (_dist_ready() and world_size() > 1):
        return items
    gathered: list[list | None] = [None] * world_size()
    dist.all_gather_object(gathered, items)
    return [item for part in gathered for item in part]
