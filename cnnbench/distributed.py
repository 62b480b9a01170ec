"""Data-parallel training under torchrun: who this process is, and the few collectives the
training loop needs. Without torchrun (WORLD_SIZE unset or 1) every call here is a no-op, so the
loop reads the same either way.

    torchrun --nproc_per_node=8 -m cnnbench train model=resnet50 ...      # one machine, 8 GPUs
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 -m cnnbench train ...

dataset.batch_size is per process (per GPU); results.json records the global batch. Only rank 0
writes logs, results, TensorBoard and checkpoints.
"""

import os
from dataclasses import dataclass
from typing import Any, List, Optional

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0  # this process among all of them
    size: int = 1  # processes in all (GPUs, or CPU processes with gloo)
    local_rank: int = 0  # this process on its machine: the GPU it drives

    @property
    def active(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def world() -> World:
    """From the variables torchrun sets for each process it starts."""
    env = os.environ
    return World(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def init() -> World:
    """Join the process group (once): NCCL for CUDA tensors where there are GPUs, gloo for CPU
    tensors (the CPU-only case, and small objects such as the run directory's name)."""
    w = world()
    if w.active and not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    return w


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """In place: the sum over every process (identity without torchrun)."""
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_max(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def barrier() -> None:
    """Wait until every process gets here."""
    if dist.is_initialized():
        dist.barrier()


def broadcast(obj: Any) -> Any:
    """Rank 0's value of obj, in every process."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: Any) -> Optional[List[Any]]:
    """Every process's obj (picklable), in rank order, on rank 0; None in the other processes
    ([obj] without torchrun). Over gloo where the group has it (object collectives take the CPU
    backend of "cpu:gloo,cuda:nccl"): for what no sum can stand for, such as every box of a split."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def weights_agree(model: torch.nn.Module) -> bool:
    """Whether every process holds the same weights (DDP keeps them equal; this checks it): one
    checksum per tensor, gathered from every rank and compared with rank 0's."""
    if not dist.is_initialized():
        return True
    sums = torch.stack([p.detach().double().sum() for p in model.parameters()])
    gathered = [torch.empty_like(sums) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, sums)
    return all(torch.equal(g, gathered[0]) for g in gathered)


def finish() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
