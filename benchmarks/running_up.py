"""``streamrec up`` as a subprocess of a benchmark: the real command, as a user runs it (the
supervisor and its processes), on a free port, its output in a log file.

Shared by ``serving.py`` and ``streaming_retrain.py``; not a benchmark itself.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from streamrec.core.addresses import EmbeddedAddresses

STREAMREC = str(Path(sys.executable).with_name("streamrec"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def parent_pid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


class RunningUp:
    """``streamrec up --port P *options`` with ``env`` in ``var``, logging to ``log_path``."""

    def __init__(self, var: Path, env: dict[str, str], options: list[str], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.var = var
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            [STREAMREC, "up", "--port", str(self.port), *options],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    async def ready(self, timeout: float = 300.0) -> None:
        """Until ``/readyz`` answers 200; exits the benchmark if ``up`` ends or never does."""
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(base_url=self.url, timeout=3) as http:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise SystemExit(f"streamrec up exited (log: {self.log_path})")
                try:
                    if (await http.get("/readyz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass  # not listening yet
                await asyncio.sleep(0.5)
        raise SystemExit(f"streamrec up was not ready in {timeout:.0f} s ({self.log_path})")

    def addresses(self) -> EmbeddedAddresses:
        """Where this ``up``'s embedded Kafka and Redis listen (its services child writes the
        file; ``up --one-process`` writes it itself)."""
        found = EmbeddedAddresses.read(self.var)
        if found is None or self.process.pid not in (found.pid, parent_pid(found.pid)):
            raise SystemExit(f"no embedded services of this `up` in {self.var}")
        return found

    async def wait_consumed(
        self, database_url: str, ratings: int, groups: set[str], timeout: float
    ) -> None:
        """Until the archive holds ``ratings`` ratings and none of ``groups`` (full names, e.g.
        ``streamrec-features``) lags in a lag reading taken after that; a group ``up`` does not
        run lags by everything, so name only groups it runs."""
        from streamrec.core.db import create_db_engine
        from streamrec.stores.catalog import Archive

        engine = create_db_engine(database_url)
        deadline = time.monotonic() + timeout
        archive = Archive(engine)
        try:
            while archive.count_between(types=["rating"]) < ratings:
                if time.monotonic() > deadline:
                    raise SystemExit(
                        f"the archive did not reach {ratings} ratings in {timeout:.0f} s"
                    )
                await asyncio.sleep(1.0)
            await self.drain(groups, deadline - time.monotonic())
        finally:
            engine.dispose()

    async def group_lag(self, groups: set[str]) -> tuple[float, dict[str, int]]:
        """A lag reading (``measured_at``, total lag per group of ``groups``)."""
        async with httpx.AsyncClient(base_url=self.url, timeout=10) as http:
            report = (await http.get("/v1/ops/lag")).json()
        lags = {g["group"]: g["total_lag"] for g in report["groups"] if g["group"] in groups}
        return report["measured_at"], lags

    async def drain(self, groups: set[str], timeout: float) -> float:
        """Until none of ``groups`` lags in a reading taken after the call; seconds waited."""
        started, since = time.monotonic(), time.time()
        while time.monotonic() - started < timeout:
            measured_at, lags = await self.group_lag(groups)
            if measured_at > since and not any(lags.values()):
                return time.monotonic() - started
            await asyncio.sleep(0.5)
        raise SystemExit(f"the consumer groups still lag after {timeout:.0f} s")

    def stop(self, timeout: float = 90.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
