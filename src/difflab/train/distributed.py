"""Data-parallel training under ``torchrun``: one process per device, one shared data stream.

``torchrun --nproc_per_node=N script.py`` starts ``N`` copies of the script with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set. :func:`setup` reads them,
joins the process group (gloo on CPU, NCCL on CUDA with device ``cuda:LOCAL_RANK``) and registers a
clean teardown at exit. Without those variables (or with ``WORLD_SIZE=1``) everything here is a
no-op, so the same training script runs with and without ``torchrun``.

The trainer keeps the optimisation independent of ``N``: every rank draws the same global batch
from the same seeded generator and keeps its contiguous slice of rows; DDP averages the gradients,
which is exactly the gradient of the global mean loss.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["DistContext", "setup", "teardown", "wrap"]


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: ``rank`` of ``world_size`` processes, on ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------ collectives (no-ops alone)
    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_reduce_sum(self, x: torch.Tensor) -> torch.Tensor:
        """Sum of ``x`` over ranks (``x`` itself when alone)."""
        if self.enabled:
            x = x.to(self.device)
            dist.all_reduce(x, op=dist.ReduceOp.SUM)
        return x

    def all_reduce_max(self, value: float) -> float:
        """The largest ``value`` over the ranks (the value itself without ``torchrun``)."""
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t.item())

    def broadcast_float(self, value: float) -> float:
        """Rank 0's ``value`` on every rank (wall-clock decisions must agree across ranks)."""
        if not self.enabled:
            return value
        x = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.broadcast(x, src=0)
        return float(x.item())

    def gather(self, obj: Any) -> list[Any]:
        """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` when alone)."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} must be an integer") from None


def setup(device: str | torch.device = "cpu") -> DistContext:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    ``device`` is the configured training device; under CUDA each process takes ``cuda:LOCAL_RANK``
    whatever index was configured. A process group the caller initialised already is used as is.
    """
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device={str(device)!r} but CUDA is not available here; use 'cpu'")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"train.device must be 'cpu' or 'cuda[:index]', got {str(device)!r}")
    if dist.is_available() and dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
    else:
        world, rank = _env_int("WORLD_SIZE", 1), _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    if world <= 1:
        return DistContext(device=device)
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if name not in os.environ:
                raise RuntimeError(
                    f"WORLD_SIZE={world} but {name} is not set; launch with "
                    f"`torchrun --nproc_per_node={world} ...`"
                )
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world)
        atexit.register(teardown)
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=device)


def wrap(model: nn.Module, ctx: DistContext) -> nn.Module:
    """``model`` in :class:`~torch.nn.parallel.DistributedDataParallel` when there are several ranks.

    DDP broadcasts rank 0's parameters and buffers at construction, so all ranks start equal.
    """
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DDP(model, device_ids=ids, output_device=ids[0] if ids else None)


def teardown() -> None:
    """Leave the process group (safe to call twice, or when none was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
