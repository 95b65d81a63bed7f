"""How a serving process uses the CPU: how many threads numpy's BLAS may use, and how nice a
consumers process is to the API workers beside it.

numpy's OpenBLAS starts a thread per core and has each call of a matrix product split over
them, spinning while it waits. The API workers and the consumer groups multiply small matrices
(a DQN over 50 candidates, a block of users against the catalog) from several threads at once
on cores they share with each other: there the split only adds waiting. Measured on 2 cores,
four threads each multiplying a (50, 192) by a (192, 64) matrix: 133 µs of CPU per product
with OpenBLAS's default of 2 threads, 14 µs with 1; under `benchmarks/serving.py` the
``rerank=dqn`` path spent 55% of an API worker's samples in that one product.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from threadpoolctl import threadpool_limits


def single_threaded_blas() -> None:
    """Every BLAS library loaded in this process computes on the calling thread (for the rest
    of the process: serving processes call it once at start)."""
    threadpool_limits(limits=1, user_api="blas")


def at_least_niceness(niceness: int) -> int:
    """Run this process (every thread of it, and the children it starts from here on) at
    ``niceness`` or nicer, never less nice than it already is; the niceness it now has.

    Consumers processes (``STREAMREC_CONSUMERS_NICE``) that share cores with API workers: the
    scheduler then gives a request that is ready before a batch, and the consumers the cores
    the API leaves idle; their lag absorbs a burst of requests instead of the requests' p99.
    """
    current = os.nice(0)
    if niceness <= current:
        return current
    target = os.nice(niceness - current)
    # On Linux a niceness belongs to a thread: os.nice changed the calling one (and the threads
    # it starts from now on) only. Threads started before, native ones included (two in a
    # consumers process, started while its libraries loaded), get it here.
    for thread in _thread_ids():
        with contextlib.suppress(ProcessLookupError):  # the thread ended meanwhile
            if os.getpriority(os.PRIO_PROCESS, thread) < target:
                os.setpriority(os.PRIO_PROCESS, thread, target)
    return target


def _thread_ids() -> list[int]:
    """This process's thread ids (Linux); none where threads have no niceness of their own."""
    tasks = Path("/proc/self/task")
    return [int(entry.name) for entry in tasks.iterdir()] if tasks.is_dir() else []
