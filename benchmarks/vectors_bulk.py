"""Bulk vector loading: 100k 64-d vectors into Qdrant Edge, a smaller load into local mode.

The original system's bulk uploads timed out. This loads through ``stores.vectors.bulk_upsert``
(streamed batches, retries, checkpoint) and measures, in the same run:

- Edge: load seconds and vectors/s, index build (``optimize``, in a child process) seconds,
  peak RSS growth of this process, query latency p50/p99 with and without a genre filter plus
  a 50-id exclusion: before the index build (``scan_``), right after it (``cold_``, the first
  queries page the index in) and warm;
- qdrant-client local mode (the server API's stand-in) on ``--local-n`` vectors: the same.

Usage: python benchmarks/vectors_bulk.py [--n 100000] [--local-n 5000] [--local-mode memory]
The last line of output is one JSON object: {"figures": ..., "targets": ..., "met": ...}.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from streamrec.stores.vectors import VectorBatch, VectorStore, bulk_upsert, open_vector_store

# Local mode warns that payload indexes are a no-op there; the figures are what matter here.
warnings.filterwarnings("ignore", message="Payload indexes have no effect")

DIM = 64
GENRES = [f"genre{i}" for i in range(18)]  # MovieLens has 18 genres
RSS_GROWTH_TARGET_MB = 500.0


def peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # kB on Linux


def stream(n: int, chunk: int = 5000, seed: int = 0) -> Iterator[VectorBatch]:
    """Generate the points chunk by chunk: the full set never exists in memory."""
    rng = np.random.default_rng(seed)
    for lo in range(0, n, chunk):
        hi = min(lo + chunk, n)
        vectors = rng.standard_normal((hi - lo, DIM), dtype=np.float32)
        payloads = [
            {
                "title": f"item {i}",
                "genres": [GENRES[i % len(GENRES)], GENRES[(i * 7) % len(GENRES)]],
                "year": 1950 + i % 70,
                "popularity": float(rng.random()),
            }
            for i in range(lo, hi)
        ]
        yield list(range(lo, hi)), vectors, payloads


def latencies(store: VectorStore, name: str, n: int, queries: int) -> dict[str, float]:
    """p50/p99 in ms of plain queries and of genre-filtered queries excluding 50 ids."""
    rng = np.random.default_rng(1)
    out: dict[str, float] = {}
    for kind in ("plain", "filtered"):
        times = []
        for _ in range(queries):
            vector = rng.standard_normal(DIM).astype(np.float32)
            genres = [GENRES[int(rng.integers(len(GENRES)))]] if kind == "filtered" else None
            exclude = rng.choice(n, 50, replace=False).tolist() if kind == "filtered" else None
            start = time.perf_counter()
            hits = store.query(name, vector, k=10, genres=genres, exclude_ids=exclude)
            times.append((time.perf_counter() - start) * 1000)
            assert len(hits) == 10, "a query returned fewer than k hits"
        out[f"{kind}_p50_ms"] = float(np.percentile(times, 50))
        out[f"{kind}_p99_ms"] = float(np.percentile(times, 99))
    return out


def load(store: VectorStore, n: int, batch_size: int, checkpoint: Path) -> dict[str, Any]:
    name = store.create_item_version("bench", DIM)
    rss_before = peak_rss_mb()
    start = time.perf_counter()
    result = bulk_upsert(
        store,
        name,
        stream(n),
        checkpoint_path=checkpoint,
        batch_size=batch_size,
        optimize=False,  # timed separately below
    )
    seconds = time.perf_counter() - start
    count = store.count(name)
    figures: dict[str, Any] = {
        "collection": name,
        "points": count,
        "load_s": seconds,
        "vectors_per_s": count / seconds,
        "retries": result.retries,
        "peak_rss_growth_mb": peak_rss_mb() - rss_before,
    }
    queries = 200 if n > 20_000 else 100
    figures |= {f"scan_{k}": v for k, v in latencies(store, name, n, queries).items()}
    start = time.perf_counter()
    store.optimize(name)
    figures["optimize_s"] = time.perf_counter() - start
    # The first queries after the (re)open page the index in: report cold and warm apart.
    figures |= {f"cold_{k}": v for k, v in latencies(store, name, n, 200).items()}
    figures |= latencies(store, name, n, 500)
    return figures


def table(rows: dict[str, dict[str, Any]]) -> str:
    keys = [k for k in next(iter(rows.values())) if k != "collection"]
    width = max(map(len, keys)) + 2
    lines = [f"{'':{width}}" + "".join(f"{name:>16}" for name in rows)]
    for key in keys:
        cells = "".join(_cell(row.get(key)) for row in rows.values())
        lines.append(f"{key:{width}}{cells}")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:>16.3f}" if value < 100 else f"{value:>16.0f}"
    return f"{value!s:>16}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="vectors loaded into Edge")
    parser.add_argument("--local-n", type=int, default=5_000, help="vectors into local mode")
    parser.add_argument("--local-mode", choices=["memory", "disk"], default="memory")
    parser.add_argument("--batch-size", type=int, default=1000)
    args = parser.parse_args()

    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="vectors-bench-") as tmp:
        work = Path(tmp)
        with open_vector_store("embedded", work / "edge") as edge:
            rows["edge"] = load(edge, args.n, args.batch_size, work / "edge.checkpoint.json")
        rows["edge"]["optimize_child_peak_rss_mb"] = peak_rss_mb(resource.RUSAGE_CHILDREN)
        url = ":memory:" if args.local_mode == "memory" else f"path:{work / 'local'}"
        with open_vector_store(url) as local:
            checkpoint = work / "local.checkpoint.json"
            rows[f"local-{args.local_mode}"] = load(
                local, args.local_n, args.batch_size, checkpoint
            )

    edge = rows["edge"]
    targets = {
        "edge_points": args.n,
        "edge_peak_rss_growth_mb_max": RSS_GROWTH_TARGET_MB,
        "local_points": args.local_n,
    }
    met = (
        edge["points"] == args.n
        and edge["peak_rss_growth_mb"] < RSS_GROWTH_TARGET_MB
        and rows[f"local-{args.local_mode}"]["points"] == args.local_n
    )
    print(f"bulk vector load: Edge {args.n:,} x {DIM}-d, local mode {args.local_n:,} x {DIM}-d")
    print(table(rows))
    print(json.dumps({"figures": rows, "targets": targets, "met": met}))
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
