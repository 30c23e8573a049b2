"""Data parallelism on ``torch.distributed``, launched by ``torchrun``.

* :mod:`objkit.distributed.group`: the process group (join, leave, barriers);
* :mod:`objkit.distributed.collectives`: gathers, sums and agreement, no-ops with one process;
* :mod:`objkit.distributed.strategy`: :class:`ParallelStrategy` (one process, DDP) and the
  wrapped :class:`StepModule`; :mod:`objkit.distributed.fsdp`: FSDP2; :mod:`objkit.distributed.choose`: which one a run uses.
"""

from objkit.distributed.collectives import (
    AllGather,
    agree,
    all_gather_objects,
    all_reduce_sum,
    broadcast_from_main,
    dist_all_gather,
    gather_rows,
)
from objkit.distributed.group import (
    barrier,
    env_world,
    init_distributed,
    main_process_first,
    process_group,
    shutdown_distributed,
)
from objkit.distributed.strategy import (
    DDPStrategy,
    ParallelStrategy,
    StepModule,
    check_resumable,
    needs_find_unused,
)
from objkit.distributed.choose import parallelize

__all__ = [
    "AllGather", "DDPStrategy", "ParallelStrategy", "StepModule", "agree", "all_gather_objects", "all_reduce_sum",
    "barrier", "broadcast_from_main", "check_resumable", "dist_all_gather", "env_world", "gather_rows",
    "init_distributed", "main_process_first", "needs_find_unused", "parallelize", "process_group",
    "shutdown_distributed",
]
