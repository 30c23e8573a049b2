"""Data parallelism on ``torch.distributed``, launched by ``torchrun``.

* :mod:`objkit.distributed.group`: the process group (join, leave, barriers);
* :mod:`objkit.distributed.collectives`: gathers, sums and agreement, no-ops with one process;
* :mod:`objkit.distributed.strategy`: :class:`ParallelStrategy` (one process, DDP) and the
  wrapped :class:`StepModule`; :mod:`objkit.distributed.fsdp`: FSDP2; :mod:`objkit.distributed.choose`: which one a run uses.
"""

import importlib
from typing import Any

# Imported on first use (PEP 562), as objkit and objkit.eval do: processes, faults and device
# are imported by commands that must start without torch.
_LAZY = {
    **dict.fromkeys(["AllGather", "agree", "all_gather_objects", "all_reduce_sum", "broadcast_from_main",
                     "dist_all_gather", "gather_rows"], "objkit.distributed.collectives"),
    **dict.fromkeys(["barrier", "env_world", "init_distributed", "main_process_first", "process_group",
                     "shutdown_distributed"], "objkit.distributed.group"),
    **dict.fromkeys(["DDPStrategy", "ParallelStrategy", "StepModule", "check_resumable", "needs_find_unused"],
                    "objkit.distributed.strategy"),
    "parallelize": "objkit.distributed.choose",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'objkit.distributed' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "AllGather", "DDPStrategy", "ParallelStrategy", "StepModule", "agree", "all_gather_objects", "all_reduce_sum",
    "barrier", "broadcast_from_main", "check_resumable", "dist_all_gather", "env_world", "gather_rows",
    "init_distributed", "main_process_first", "needs_find_unused", "parallelize", "process_group",
    "shutdown_distributed",
]
