"""Data-parallel training with :mod:`torch.distributed`, launched by ``torchrun``.

:func:`mdgr_graph.train.fit` and :func:`~mdgr_graph.train.evaluate` use these helpers
whenever a process group is initialised, so the one training loop serves a single process
and many:

- training batches are split over ranks by a :class:`~torch.utils.data.DistributedSampler`
  (``TrainConfig.batch_size`` stays the *global* batch: each rank takes
  ``batch_size // world_size`` sequences), and the model is wrapped in
  :class:`~torch.nn.parallel.DistributedDataParallel`, which averages gradients;
- evaluation is sharded (rank ``r`` scores examples ``r, r + W, r + 2W, ...``) and the
  metric sums and counts of every rank are merged, so every rank gets the exact global
  means of a single-process evaluation (up to float summation order);
- only rank 0 writes checkpoints, logs and result files, and only rank 0 reads them: on
  ``resume`` and at the end of training it sends ``last.pt`` / ``best.pt`` to the other ranks
  (:func:`broadcast_object`), so machines need not share the output folder.

Launch (see docs/training.md)::

    torchrun --nproc_per_node 2 examples/train_mdgr.py --out runs/ddp ...
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from mdgr_graph.metrics import MetricAccumulator

__all__ = [
    "LossModule",
    "all_merge_metrics",
    "barrier",
    "broadcast_object",
    "init_from_env",
    "is_distributed",
    "is_main_process",
    "launched_by_torchrun",
    "local_device",
    "main_process_first",
    "rank",
    "shutdown",
    "world_size",
]


def launched_by_torchrun() -> bool:
    """True when ``torchrun`` (or another launcher) set ``WORLD_SIZE > 1``."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def local_device(device: str) -> str:
    """``cuda:<LOCAL_RANK>`` for a CUDA ``device`` under a launcher, else ``device``."""
    if device.startswith("cuda") and launched_by_torchrun():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def init_from_env(device: str = "cpu", timeout_s: float = 1800.0) -> bool:
    """Join the process group described by torchrun's environment variables.

    Uses ``nccl`` for CUDA devices and ``gloo`` on the CPU. Returns False (and does
    nothing) when not launched with more than one process; True once the group exists.
    """
    if not launched_by_torchrun():
        return False
    if dist.is_initialized():
        return True
    for key in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if key not in os.environ:
            raise RuntimeError(
                f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {key} is not set; launch with "
                "torchrun (e.g. torchrun --nproc_per_node 2 examples/train_mdgr.py ...)"
            )
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_device(device))
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return True


def shutdown() -> None:
    """Leave the process group (no-op when there is none)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    """True inside an initialised process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Rank 0, or the only process: the one that writes files and prints."""
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


@contextmanager
def main_process_first():
    """Run a block on rank 0 first, then on the others (e.g. to fill a cache once)."""
    if not is_main_process():
        barrier()
    try:
        yield
    finally:
        if is_main_process():
            barrier()


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (pickled; tensors travel on the CPU); ``obj`` itself
    outside a process group. Every rank must call it."""
    if not is_distributed():
        return obj
    box = [obj if rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_merge_metrics(acc: MetricAccumulator) -> MetricAccumulator:
    """A new accumulator holding the metric sums and counts of every rank.

    Each rank passes the accumulator of its shard; every rank gets the same merged
    result, whose :meth:`~MetricAccumulator.compute` is the global mean.
    """
    if not is_distributed():
        return acc
    states: list[dict[str, tuple[float, int]] | None] = [None] * world_size()
    dist.all_gather_object(states, acc.state())
    merged = MetricAccumulator()
    for state in states:
        merged.merge(state)
    return merged


class LossModule(nn.Module):
    """``forward(batch) = model.loss(batch)``, so DDP sees the loss as its forward.

    :class:`~torch.nn.parallel.DistributedDataParallel` hooks ``forward``; the project's
    models compute their training objective in ``loss``. Wrapping keeps the parameters
    (shared with ``model``) and lets DDP synchronise their gradients.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch) -> Tensor:
        return self.model.loss(batch)
