"""The command line's context-parallel options, and the job they start (argparse only at import: ``--help``
must not import torch)."""

from __future__ import annotations

import os
from contextlib import contextmanager

SCHEDULE_CHOICES = ("wavefront", "naive")  # cometlm.parallel.schedule.SCHEDULES, without importing torch
DEFAULT_TIMEOUT_S = 600.0  # cometlm.parallel.distributed.DEFAULT_TIMEOUT_S


def add_parallel_options(parser) -> None:
    group = parser.add_argument_group(
        "context parallelism", "run under torchrun: `torchrun --standalone --nproc_per_node P*D -m cometlm.cli train "
        "--context-parallel P ...` (D data-parallel replicas of a P-stage pipeline; gloo on CPU, NCCL on GPUs)",
    )
    group.add_argument("--context-parallel", type=int, default=1, metavar="P",
                       help="pipeline stages per sample: each of P ranks owns a contiguous block of a sample's chunks "
                       "and passes each layer's memories on to the next (default 1: no pipeline)")
    group.add_argument("--pipeline-schedule", choices=SCHEDULE_CHOICES, default="wavefront",
                       help="wavefront: rank p starts layer l as soon as rank p-1 has finished it (default); naive: "
                       "rank p starts only when rank p-1 has finished all layers (for comparison)")
    group.add_argument("--dist-timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                       help="a rank that waits this long for a peer stops with an error, and so does every rank "
                       f"(default {DEFAULT_TIMEOUT_S:.0f}; must exceed the slowest step and checkpoint write)")


@contextmanager
def parallel_job(args):
    """Yields this process's ``ContextParallel`` when the command runs as a parallel job (``--context-parallel``
    above 1, or torchrun started several processes), else None. Any failure on this rank is reported with its
    rank and tears the job down; after success, the last messages are delivered and the process group closed."""
    if args.context_parallel == 1 and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        yield None
        return
    from .distributed import init_context_parallel, stop_on_failure

    parallel = init_context_parallel(args.context_parallel, args.pipeline_schedule, args.dist_timeout)
    with stop_on_failure(parallel):  # on failure it tears the process group down itself
        yield parallel
        parallel.close()
