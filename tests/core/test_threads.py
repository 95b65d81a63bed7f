"""Serving processes compute their small matrix products on the calling thread."""

from __future__ import annotations

import numpy  # noqa: F401  (loads numpy's BLAS, the library the limit is for)
from threadpoolctl import threadpool_info

from streamrec.core.threads import single_threaded_blas


def test_blas_computes_on_the_calling_thread() -> None:
    single_threaded_blas()
    blas = [pool for pool in threadpool_info() if pool["user_api"] == "blas"]
    assert blas and all(pool["num_threads"] == 1 for pool in blas)
