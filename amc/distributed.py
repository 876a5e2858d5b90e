"""Data-parallel training under ``torchrun``: process-group set-up and the few collectives
:func:`amc.train.train` needs. One process (no ``torchrun``) takes none of these paths.

``torchrun --nproc-per-node N -m amc finetune ...`` starts N processes with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and a rendezvous address in the environment; :func:`init`
joins them into one group (NCCL on CUDA, gloo on CPU).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from amc.errors import AmcError


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """The one process that writes files and prints."""
        return self.rank == 0


def launched() -> bool:
    """Started by torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: str) -> Ranks:
    """Join torchrun's process group (once); one process gets ``Ranks()`` and no group."""
    if not launched():
        return Ranks()
    if not dist.is_available():
        raise AmcError("torchrun started several processes, but this torch has no torch.distributed")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        cuda = device in ("cuda", "auto") and torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if cuda else "gloo")
    return Ranks(dist.get_rank(), dist.get_world_size(), local)


def current() -> Ranks:
    """This process's place in an initialised group, or ``Ranks()``."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return Ranks()


def sum_all(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum of ``values`` over all processes."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def sync_buffers(model: nn.Module) -> None:
    """Give every process rank 0's buffers (BN running statistics are updated per process)."""
    for b in model.buffers():
        dist.broadcast(b.data, 0)


def identical_everywhere(model: nn.Module) -> bool:
    """Whether every process holds exactly the same parameters and buffers."""
    flat = torch.cat([t.detach().double().flatten() for t in model.state_dict().values()])
    hi, lo = flat.clone(), flat.clone()
    dist.all_reduce(hi, dist.ReduceOp.MAX)
    dist.all_reduce(lo, dist.ReduceOp.MIN)
    return bool(torch.equal(hi, lo))


def finish(wait: bool = True) -> None:
    """Leave the group. ``wait``: first wait for every process, so none tears down its gloo
    connections while a peer still uses them (a rank that left early aborted with SIGABRT);
    skipped on the error path, where a peer may never arrive."""
    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()
