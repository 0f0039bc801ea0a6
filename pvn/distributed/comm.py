"""Collectives over workers' flat vectors, on torch.distributed or simulated in one process.

The algorithms are written once against :class:`Comm`: a process runs ``local`` workers (all N
when simulated, its own rank under torchrun) and exchanges flat vectors with every worker. Under
torchrun the calls are ``torch.distributed`` collectives (gloo on CPU, NCCL on GPU); simulated,
they are the same arithmetic on the list of local vectors, so both give the same numbers. Bytes
sent by one worker are counted (cumulatively, in ``bytes_sent``) as a ring all-gather
((n - 1) d) or ring all-reduce (2 (n - 1) d / n) sends them.
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist


class Comm:
    """``world`` workers; this process runs those in ``local`` (a list of worker ids)."""

    world: int
    local: list[int]
    rank: int  # this process's rank (0 when simulated): it owns logging and checkpoints

    def __init__(self) -> None:
        self.bytes_sent = 0

    def all_gather(self, vectors: list[torch.Tensor]) -> torch.Tensor:
        """Every worker's vector, (world, d), from this process's workers' ``vectors``."""
        raise NotImplementedError

    def all_reduce_sum(self, vectors: list[torch.Tensor]) -> torch.Tensor:
        """The sum over all workers of their vectors."""
        raise NotImplementedError

    def gather_objects(self, obj: list) -> list | None:
        """Rank 0 receives every process's list (concatenated in worker order); others None."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class SimulatedComm(Comm):
    """N virtual workers in this process (``distributed.backend=simulate``)."""

    def __init__(self, world: int) -> None:
        super().__init__()
        self.world, self.local, self.rank = world, list(range(world)), 0

    def all_gather(self, vectors: list[torch.Tensor]) -> torch.Tensor:
        out = torch.stack(vectors)
        self.bytes_sent += (self.world - 1) * vectors[0].numel() * vectors[0].element_size()
        return out

    def all_reduce_sum(self, vectors: list[torch.Tensor]) -> torch.Tensor:
        v = vectors[0]
        self.bytes_sent += 2 * (self.world - 1) * v.numel() * v.element_size() // self.world
        return torch.stack(vectors).sum(0)

    def gather_objects(self, obj: list) -> list:
        return obj


class TorchComm(Comm):
    """One worker per process, from torchrun's environment (``distributed.backend=torch``)."""

    def __init__(self, device: str, timeout_s: float = 60.0) -> None:
        super().__init__()
        if not dist.is_initialized():
            dist.init_process_group(
                "nccl" if device == "cuda" else "gloo",
                timeout=datetime.timedelta(seconds=timeout_s),
            )
        self.world, self.rank = dist.get_world_size(), dist.get_rank()
        self.local = [self.rank]
        if device == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))

    def all_gather(self, vectors: list[torch.Tensor]) -> torch.Tensor:
        (v,) = vectors
        out = [torch.empty_like(v) for _ in range(self.world)]
        dist.all_gather(out, v.contiguous())
        self.bytes_sent += (self.world - 1) * v.numel() * v.element_size()
        return torch.stack(out)

    def all_reduce_sum(self, vectors: list[torch.Tensor]) -> torch.Tensor:
        (v,) = vectors
        v = v.clone()
        dist.all_reduce(v)
        self.bytes_sent += 2 * (self.world - 1) * v.numel() * v.element_size() // self.world
        return v

    def gather_objects(self, obj: list) -> list | None:
        out = [None] * self.world if self.rank == 0 else None
        dist.gather_object(obj, out, dst=0)
        return [x for part in out for x in part] if out is not None else None

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def in_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ
