"""Serving processes compute their small matrix products on the calling thread, and consumers
processes can be made nicer than the API workers beside them."""

from __future__ import annotations

import subprocess
import sys

import numpy  # noqa: F401  (loads numpy's BLAS, the library the limit is for)
from threadpoolctl import threadpool_info

from streamrec.core.threads import single_threaded_blas


def test_blas_computes_on_the_calling_thread() -> None:
    single_threaded_blas()
    blas = [pool for pool in threadpool_info() if pool["user_api"] == "blas"]
    assert blas and all(pool["num_threads"] == 1 for pool in blas)


def test_a_process_is_made_nicer_never_less_nice() -> None:
    """Niceness is the whole process's and only root may lower it: checked in a child."""
    script = (
        "from streamrec.core.threads import at_least_niceness as n; import os; "
        "print(n(5), n(3), n(0), n(9), os.nice(0))"
    )
    found = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert found.returncode == 0, found.stderr
    assert found.stdout.split() == ["5", "5", "5", "9", "9"]


def test_threads_started_before_are_made_nicer_too() -> None:
    """On Linux each thread has its own niceness: one started before the call (as libraries
    start native threads when they load) is made as nice as the process."""
    script = (
        "import os, threading; from streamrec.core.threads import at_least_niceness as n; "
        "stop = threading.Event(); t = threading.Thread(target=stop.wait); t.start(); "
        "n(6); print(os.getpriority(os.PRIO_PROCESS, t.native_id)); stop.set(); t.join()"
    )
    found = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert found.returncode == 0, found.stderr
    assert found.stdout.split() == ["6"]
