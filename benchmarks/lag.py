"""``GET /v1/ops/lag`` on a loaded embedded system: latency and staleness of the cached reader.

    python benchmarks/lag.py [--seconds 20] [--rate 2000] [--clients 4]

Starts ``streamrec up`` (API + every consumer group + embedded Kafka, Redis and SQLite, in a
temporary var dir) as a subprocess and loads it with ``streamrec replay synthetic --rate`` in
another. While the replay runs, this process measures, for ``--seconds`` each (1 and 2
together, interleaved):

1. ``GET /v1/ops/lag`` from ``--clients`` concurrent keep-alive clients (raw HTTP/1.1 on
   asyncio streams, not httpx, whose own CPU cost would be measured): latency p50/p99, and
   the staleness of each answer (the time of the answer minus its ``measured_at``);
2. the floor (peer, same run): ``GET /healthz`` on the same server, same clients, each
   client asking for lag and healthz in turn (both meet the same load);
3. the uncached reading (peer, same run): ``core.lag.consumer_lag``, one reading with fresh
   Kafka clients, which is what each call cost before the shared reader;
4. what the shared reader's background reading costs: ``LagReader.refresh()`` on one
   long-lived reader, every 0.5 s (``reading_ms``; it runs once per refresh interval).

Prints one JSON line: {"figures": ..., "targets": ..., "met": ...}. Targets: lag p99 <= 20 ms;
staleness max <= the refresh interval (STREAMREC_LAG_REFRESH_SECONDS, 5 s) plus one reading.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from running_up import STREAMREC, RunningUp  # noqa: E402

from streamrec.core.lag import LagReader, consumer_lag  # noqa: E402

REFRESH_SECONDS = 5.0
TARGETS = {"lag_p99_ms": 20.0, "staleness_max_s": REFRESH_SECONDS + 1.0}


def percentiles(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values)
    return {
        "p50": round(float(np.percentile(arr, 50)), 3),
        "p99": round(float(np.percentile(arr, 99)), 3),
        "max": round(float(arr.max()), 3),
        "n": len(values),
    }


async def _get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> bytes:
    """One keep-alive HTTP/1.1 GET on a raw connection: httpx would cost more CPU per request
    than the server (see benchmarks/serving.py), and this process shares the 2 cores."""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    status = head.split(b" ", 2)[1]
    if status != b"200":
        raise RuntimeError(f"{path} answered {status.decode()}")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return await reader.readexactly(length)


async def _http(port: int, seconds: float, clients: int) -> tuple[list, list, list]:
    """Latencies (ms) of ``/v1/ops/lag`` and of ``/healthz``, requested in turn on each
    connection so that both meet the same load, and the staleness (s) of each lag answer."""
    lag: list[float] = []
    floor: list[float] = []
    staleness: list[float] = []
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                body = await _get(reader, writer, "/v1/ops/lag")
                lag.append((time.perf_counter() - started) * 1000)
                staleness.append(time.time() - json.loads(body)["measured_at"])
                started = time.perf_counter()
                await _get(reader, writer, "/healthz")
                floor.append((time.perf_counter() - started) * 1000)
        finally:
            writer.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    return lag, floor, staleness


async def _uncached(bootstrap: list[str], seconds: float) -> list[float]:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        await consumer_lag(bootstrap)
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


async def _readings(bootstrap: list[str], seconds: float) -> list[float]:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    async with LagReader(bootstrap) as reader:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            await reader.refresh()
            latencies.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(0.5)
    return latencies[1:]  # the first one connects


async def main(args: argparse.Namespace) -> dict:
    var = Path(tempfile.mkdtemp(prefix="streamrec-lag-bench-"))
    env = {**os.environ, "STREAMREC_VAR_DIR": str(var)}
    for name in ("KAFKA_BOOTSTRAP", "REDIS_URL", "QDRANT_URL", "DATABASE_URL"):
        env.pop(f"STREAMREC_{name}", None)  # everything embedded
    up = RunningUp(var, env, [], var / "up.log")
    replay = None
    try:
        await up.ready(timeout=120.0)
        events = int(args.rate * args.seconds * 4)  # lasts the three phases
        replay = subprocess.Popen(
            [STREAMREC, "replay", "synthetic", "--rate", str(args.rate), "--events", str(events)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        await asyncio.sleep(2.0)  # the replay under way
        bootstrap = [up.addresses().kafka_bootstrap]
        lag_ms, floor_ms, staleness = await _http(up.port, args.seconds, args.clients)
        uncached_ms = await _uncached(bootstrap, args.seconds)
        reading_ms = await _readings(bootstrap, args.seconds)
        replay_running = replay.poll() is None
    finally:
        if replay is not None and replay.poll() is None:
            replay.terminate()
            replay.wait(timeout=60)
        up.stop(timeout=60)
    figures = {
        "lag_ms": percentiles(lag_ms),
        "healthz_ms": percentiles(floor_ms),
        "uncached_reading_ms": percentiles(uncached_ms),
        "reading_ms": percentiles(reading_ms),
        "staleness_s": percentiles(staleness),
        "replay_rate": args.rate,
        "replay_still_running_at_the_end": replay_running,
        "clients": args.clients,
    }
    met = {
        "lag_p99_ms": figures["lag_ms"]["p99"] <= TARGETS["lag_p99_ms"],
        "staleness_max_s": figures["staleness_s"]["max"] <= TARGETS["staleness_max_s"],
    }
    return {"figures": figures, "targets": TARGETS, "met": met}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=2000.0, help="replayed events/s")
    parser.add_argument("--clients", type=int, default=4)
    print(json.dumps(asyncio.run(main(parser.parse_args()))))
