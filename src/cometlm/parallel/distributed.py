"""Running the pipeline under torchrun: process groups, data parallelism, gradient reduction and failures.

The world is a ``D x P`` mesh: ``rank = replica * P + stage``. The ``P`` ranks of a replica form one pipeline
over the chunks of the same micro-batch; the ``D`` replicas read different micro-batches. Each rank's loss is
its chunks' token losses divided by the number of targets in all replicas' micro-batches together, so one
sum of gradients over the whole world (pipeline and data dimensions at once) gives exactly the gradient of a
single process on the union of the replicas' batches. Point-to-point messages and that one all-reduce are all
the communication there is, so the default process group (with its timeout) is the only one needed.

Failures: every collective and receive runs under the process group's timeout, a dead peer makes gloo raise
at once (its sockets close), and ``stop_on_failure`` turns any exception into a one-line error naming the rank
and tears the process group down, so the process exits instead of hanging; torchrun then stops the others.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .schedule import Pipeline, Stage

DEFAULT_TIMEOUT_S = 600.0
_BUCKET_BYTES = 32 * 2**20


@dataclass
class ContextParallel:
    """This process's place in a ``D x P`` job, and what the training loop calls on it.

    rank, world_size   global rank and number of processes (``world_size = D * P``)
    stages             P, the ranks per pipeline (``--context-parallel``)
    device             where this rank computes (``cuda:LOCAL_RANK`` with NCCL, else the CPU)
    """

    rank: int
    world_size: int
    stages: int
    device: torch.device
    pipeline: Pipeline

    @property
    def stage(self) -> int:
        return self.rank % self.stages

    @property
    def replica(self) -> int:
        return self.rank // self.stages

    @property
    def replicas(self) -> int:
        return self.world_size // self.stages

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, metrics, plots and the final model, and shows progress."""
        return self.rank == 0

    def describe(self) -> str:
        return (f"rank {self.rank} of {self.world_size} (pipeline stage {self.stage + 1}/{self.stages}, "
                f"data replica {self.replica + 1}/{self.replicas})")

    def loss(self, model, input_ids, attention_mask=None, labels=None, chunk_sizes=None, num_items_in_batch=None):
        """This rank's part of the loss of its replica's micro-batch (arguments as in ``model.forward``)."""
        chunked = model.split_chunks(input_ids, attention_mask, labels, chunk_sizes)
        return self.pipeline.loss(model, chunked, num_items_in_batch)

    def global_count(self, count: int) -> int:
        """The number of targets (or samples) over all replicas (the ranks of a pipeline share a micro-batch, so
        each counts its replica's and the world sum counts every replica ``P`` times)."""
        total = torch.tensor([count], dtype=torch.int64, device=self.device)
        dist.all_reduce(total)
        return int(total) // self.stages

    def reduce(self, model, loss: float, tokens: int) -> tuple[float, int]:
        """Sums every trainable parameter's gradient over all ranks (after the step's backward passes); returns
        the step's loss over all replicas and the tokens they read."""
        self.pipeline.wait()
        sum_gradients([p for p in model.parameters() if p.requires_grad])
        totals = torch.tensor([loss, tokens], dtype=torch.float64, device=self.device)
        dist.all_reduce(totals)
        return float(totals[0]), round(float(totals[1]) / self.stages)

    def close(self) -> None:
        self.pipeline.wait()
        if dist.is_initialized():
            dist.destroy_process_group()


def sum_gradients(params: list[torch.nn.Parameter], group=None) -> None:
    """All-reduces (sums) the gradients of ``params`` in buckets. A gradient that is None on every rank stays
    None (the optimizer skips such a parameter, as in a single process); None on some ranks counts as zero."""
    if not params:
        return
    device = params[0].device
    present = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device)
    dist.all_reduce(present, group=group)
    used = [p for p, flag in zip(params, present.tolist()) if flag > 0]
    for p in used:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    bucket, size = [], 0
    for p in used:
        if bucket and (p.grad.dtype != bucket[0].grad.dtype or size + p.grad.nbytes > _BUCKET_BYTES):
            _sum_bucket(bucket, group)
            bucket, size = [], 0
        bucket.append(p)
        size += p.grad.nbytes
    if bucket:
        _sum_bucket(bucket, group)


def _sum_bucket(params, group) -> None:
    flat = torch.cat([p.grad.flatten() for p in params])
    dist.all_reduce(flat, group=group)
    for p, piece in zip(params, flat.split([p.grad.numel() for p in params])):
        p.grad.copy_(piece.view_as(p.grad))


def init_context_parallel(stages: int, schedule: str = "wavefront", timeout_s: float = DEFAULT_TIMEOUT_S):
    """Joins the job torchrun started (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT`` in the
    environment): NCCL on GPUs, else gloo; ``world_size`` must be a multiple of ``stages`` (``D = world / P``)."""
    if not isinstance(stages, int) or stages < 1:
        raise ValueError(f"--context-parallel must be a positive number of pipeline stages (got {stages!r})")
    if not timeout_s > 0:
        raise ValueError(f"the process-group timeout must be > 0 seconds (got {timeout_s})")
    missing = [name for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise RuntimeError(
            f"--context-parallel {stages} runs one process per pipeline stage, started by torchrun (the environment "
            f"lacks {', '.join(missing)}); run e.g. `torchrun --standalone --nproc_per_node {stages} -m cometlm.cli "
            f"train --context-parallel {stages} ...`"
        )
    world_size = int(os.environ["WORLD_SIZE"])
    if world_size % stages:
        raise ValueError(
            f"the world of {world_size} processes is not a whole number of {stages}-stage pipelines; start "
            f"P x D processes (--nproc_per_node times nodes) for --context-parallel P"
        )
    if torch.cuda.is_available():
        backend, device = "nccl", torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    else:
        backend, device = "gloo", torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s),
                                device_id=device if backend == "nccl" else None)
    rank = dist.get_rank()
    first = rank - rank % stages
    pipeline = Pipeline(Stage(rank % stages, tuple(range(first, first + stages))), schedule)
    return ContextParallel(rank, world_size, stages, device, pipeline)


@contextmanager
def stop_on_failure(parallel: ContextParallel):
    """Any exception on this rank (its own failure, a peer that died, a timeout) prints which rank stopped and
    why, and tears down the process group, so that this process exits and its peers' next receive or
    collective fails at once instead of waiting for the timeout."""
    try:
        yield
    except BaseException as err:
        if not isinstance(err, KeyboardInterrupt):
            print(f"error: {parallel.describe()} stopped: {type(err).__name__}: {err}\n"
                  "every rank of a context-parallel job stops when one fails or times out; the first error "
                  "above names the cause", file=sys.stderr, flush=True)
        if dist.is_initialized():
            dist.destroy_process_group()
        raise
