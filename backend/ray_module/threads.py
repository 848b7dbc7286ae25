"""How many compute threads a worker uses: one per core it reserved, but never more than the
cores its machine lets it have.

Ray sets ``OMP_NUM_THREADS`` to an actor's CPUs unless the machine's operator set it first;
an operator who runs several nodes on one machine (or a test that plays several machines on
two cores) sets it to stop their workers from fighting over the same cores: a thread that
waits for a core costs far more than it adds.
"""

from __future__ import annotations

import os


def threads_for(cores: float) -> int:
    """Threads for ``cores`` reserved cores (a fractional share still gets one)."""
    wanted = max(1, int(cores))
    cap = os.environ.get("OMP_NUM_THREADS", "")
    if cap.isdigit() and int(cap) > 0:
        wanted = min(wanted, int(cap))
    return min(wanted, len(os.sched_getaffinity(0)))


def use_cores(cores: float) -> int:
    """Set this process's torch threads for ``cores`` reserved cores; the threads used."""
    import torch

    threads = threads_for(cores)
    torch.set_num_threads(threads)
    return threads
