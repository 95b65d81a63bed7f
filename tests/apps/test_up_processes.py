"""``streamrec up`` as processes (apps/up.py): the real command in a subprocess, on the embedded
services in a temporary var dir, with two API workers on a free port."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from streamrec.apps.up import default_consumer_processes
from streamrec.core.addresses import (
    EmbeddedAddresses,
    VectorHostAddress,
    through_running_vector_host,
)
from streamrec.core.settings import Settings
from streamrec.stores.vectors import RemoteVectorStore, open_vector_store

pytestmark = pytest.mark.kafka

INGEST_KEY = "test-ingest-key"
HANG_GUARD_SECONDS = 180.0  # only against a hang: start-up on a busy 2-core machine takes ~20 s
STREAMREC = Path(sys.executable).parent / "streamrec"
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def until(condition: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + HANG_GUARD_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"hang guard: still waiting for {what}")
        time.sleep(0.1)


@dataclass
class Up:
    process: subprocess.Popen[bytes]
    port: int
    metrics_port: int
    var_dir: Path
    output: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def children(self) -> dict[str, int]:
        """Role (``services``, ``consumers``, ``api``; API workers as ``api``, ``api#2``...)
        → pid of each child process of the supervisor."""
        found: dict[str, int] = {}
        for child in psutil.Process(self.process.pid).children():
            try:
                cmdline = child.cmdline()
            except psutil.Error:  # just died (a zombie until the supervisor reaps it)
                continue
            if "streamrec.apps.up_children" not in cmdline:
                continue
            role = cmdline[cmdline.index("streamrec.apps.up_children") + 1]
            name, n = role, 1
            while name in found:
                n += 1
                name = f"{role}#{n}"
            found[name] = child.pid
        return found

    def api_pids(self) -> set[int]:
        return {pid for name, pid in self.children().items() if name.startswith("api")}

    def every_process(self) -> set[int]:
        """The supervisor, every process below it, and the embedded redis-server (it
        daemonizes: its parent is not the services process)."""
        pids = {self.process.pid}
        pids |= {p.pid for p in psutil.Process(self.process.pid).children(recursive=True)}
        found = EmbeddedAddresses.read(self.var_dir)
        assert found is not None
        socket_path = found.redis_url.removeprefix("unix://")
        for proc in psutil.process_iter(["cmdline"]):
            if any(socket_path in part for part in proc.info["cmdline"] or ()):
                pids.add(proc.pid)
        return pids

    def restarts(self, child: str) -> float:
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics").text
        match = re.search(rf'streamrec_child_restarts_total{{child="{child}"}} (\S+)', text)
        return float(match.group(1)) if match else -1.0


def answering_pid(up: Up, path: str = "/healthz") -> tuple[int, httpx.Response]:
    """One request on a connection of its own (so the kernel picks a worker for it)."""
    response = httpx.get(up.base + path, headers={"Connection": "close"})
    return int(response.headers["x-streamrec-worker"]), response


def serving(up: Up) -> bool:
    try:
        return httpx.get(up.base + "/readyz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def start_up(tmp_path: Path) -> Iterator[Callable[..., Up]]:
    started: list[Up] = []

    def start(*options: str, **settings: str) -> Up:
        """``streamrec up`` with ``options``; ``settings``: more STREAMREC_* variables."""
        port, metrics_port = free_port(), free_port()
        var_dir = tmp_path / "var"
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")},
            "STREAMREC_VAR_DIR": str(var_dir),
            "STREAMREC_INGEST_API_KEY": INGEST_KEY,
            "STREAMREC_ADMIN_API_KEY": "test-admin-key",
            "STREAMREC_RETRAIN_MODELS": "",  # no training round in the middle of the test
            **{f"STREAMREC_{name.upper()}": value for name, value in settings.items()},
        }
        output = tmp_path / "up.log"
        command = [str(STREAMREC), "up", "--port", str(port), "--api-workers", "2"]
        process = subprocess.Popen(
            [*command, "--metrics-port", str(metrics_port), *options],
            env=env,
            cwd=REPO,
            stdout=output.open("wb"),
            stderr=subprocess.STDOUT,
        )
        up = Up(process, port, metrics_port, var_dir, output)
        started.append(up)
        until(lambda: "streamrec is up" in up.text() or process.poll() is not None, "the banner")
        assert process.poll() is None, up.text()
        return up

    yield start
    for up in started:
        if up.process.poll() is None:
            leftovers = up.every_process()
            up.process.send_signal(signal.SIGTERM)
            try:
                up.process.wait(timeout=HANG_GUARD_SECONDS)
            finally:
                for pid in leftovers:  # whatever a failed test left behind
                    if psutil.pid_exists(pid):
                        os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_up_stops_every_process(start_up: Callable[[], Up], signum: signal.Signals) -> None:
    up = start_up()
    children = up.children()
    # One consumers process per core up to two: the vectors group has its own on 2 cores.
    consumers = ["consumers", "consumers-2"][: default_consumer_processes()]
    roles = {"services", "api", "api#2", *(c.replace("-", "#") for c in consumers)}
    assert set(children) == roles
    pids = up.every_process()
    assert len(pids) >= 5 + len(consumers)  # supervisor, services, redis-server, two API workers
    banner = up.text()
    for name in ("services", *consumers, "api-1", "api-2"):
        assert re.search(rf"{name}\s+pid \d+", banner), banner

    # A command beside it (`streamrec vectors publish`) finds the consumers' vector host.
    host = VectorHostAddress.read(up.var_dir)
    assert host is not None and host.pid == up.process.pid
    attached = through_running_vector_host(Settings(var_dir=up.var_dir, qdrant_url="embedded"))
    assert attached.vector_host_url == host.url
    with open_vector_store(attached) as store:
        assert isinstance(store, RemoteVectorStore)
        assert isinstance(store.list_collections(), list)  # answered by the consumers process

    up.process.send_signal(signum)
    up.process.wait(timeout=HANG_GUARD_SECONDS)
    # SIGINT/SIGTERM: the supervisor stops its children; SIGKILL: the kernel sends each one
    # SIGTERM (PR_SET_PDEATHSIG). Either way none is left, nor the redis-server.
    until(lambda: not any(_alive(pid) for pid in pids), "every process to end")
    if signum != signal.SIGKILL:
        assert up.process.returncode == 0, up.text()
    assert EmbeddedAddresses.read(up.var_dir) is None
    assert VectorHostAddress.read(up.var_dir) is None


def test_up_stops_during_a_replay(start_up: Callable[..., Up]) -> None:
    """The replay stops first, while Kafka is up: once the services had stopped, its
    publisher waited for Kafka forever and the supervisor never exited."""
    up = start_up("--replay", "synthetic", "--rate", "50")
    until(lambda: _ratings_published(up) > 0, "the replay to publish")
    pids = up.every_process()
    up.process.send_signal(signal.SIGTERM)
    up.process.wait(timeout=HANG_GUARD_SECONDS)
    assert up.process.returncode == 0, up.text()
    until(lambda: not any(_alive(pid) for pid in pids), "every process to end")


def _ratings_published(up: Up) -> int:
    report = httpx.get(up.base + "/v1/ops/lag", timeout=10).json()
    return sum(
        p["end_offset"]
        for g in report["groups"]
        if g["group"] == "streamrec-features"
        for p in g["partitions"]
        if p["topic"] == "streamrec.ratings"
    )


def test_two_workers_share_the_port_and_the_state_and_dead_children_come_back(
    start_up: Callable[[], Up],
) -> None:
    up = start_up()
    workers = up.api_pids()
    assert len(workers) == 2

    # Connections spread over both workers (the kernel hashes each to one socket).
    seen: set[int] = set()

    def both_answered() -> bool:
        seen.add(answering_pid(up)[0])
        return seen == workers

    until(both_answered, "both workers to answer")

    # An event posted through one worker: its effect is visible from both.
    _post_rating(up, "alice")
    _visible_from(up, "alice", workers)

    # A killed API worker is started again; the port keeps serving meanwhile.
    killed = next(iter(workers))
    os.kill(killed, signal.SIGKILL)
    until(lambda: up.api_pids() - workers, "a new API worker")
    until(lambda: up.restarts("api-1") + up.restarts("api-2") == 1, "the restart counted")
    workers = up.api_pids()
    assert killed not in workers and len(workers) == 2
    _visible_from(up, "alice", workers)  # it also reads the shared state
    assert "exited with status -9" in up.text()

    # A killed consumers process is started again and consumes where it left off.
    consumers = up.children()["consumers"]
    os.kill(consumers, signal.SIGKILL)
    until(lambda: up.restarts("consumers") == 1, "the consumers restart counted")
    until(lambda: up.children().get("consumers") not in (None, consumers), "new consumers")
    _post_rating(up, "bob")
    _visible_from(up, "bob", workers)
    assert up.restarts("services") == 0
    assert up.api_pids() == workers  # the API workers did not need a restart


def _post_rating(up: Up, user: str) -> None:
    until(lambda: serving(up), "the API to be ready")
    response = httpx.post(
        up.base + "/v1/events",
        json={"type": "rating", "user_id": user, "item_id": "m1", "rating": 4.5},
        headers={"X-API-Key": INGEST_KEY},
    )
    assert response.status_code == 202, response.text


def _visible_from(up: Up, user: str, workers: set[int]) -> None:
    """Until each worker in ``workers`` has answered the user's history with the event."""
    confirmed: set[int] = set()

    def check() -> bool:
        pid, response = answering_pid(up, f"/v1/users/{user}/history")
        if response.status_code == 200 and response.json()["ratings"] >= 1:
            confirmed.add(pid)
        return workers <= confirmed

    until(check, f"{user}'s rating visible from workers {sorted(workers)}")


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_consumer_groups_spread_over_processes_and_each_comes_back(
    start_up: Callable[..., Up],
) -> None:
    up = start_up("--consumer-processes", "2", consumers_nice="7")
    children = up.children()
    assert set(children) == {"services", "consumers", "consumers#2", "api", "api#2"}
    assert re.search(r"consumers-2\s+pid \d+", up.text()), up.text()
    second = _second_consumers(up)
    assert "features,archive,online-rl" in psutil.Process(second).cmdline()
    # STREAMREC_CONSUMERS_NICE: the consumers processes yield the cores to the API workers.
    niceness = {role: psutil.Process(pid).nice() for role, pid in children.items()}
    assert niceness == {"services": 0, "consumers": 7, "consumers#2": 7, "api": 0, "api#2": 0}

    # The features group runs in the second process: a rating reaches every worker.
    workers = up.api_pids()
    _post_rating(up, "carol")
    _visible_from(up, "carol", workers)

    # Killed, the second process alone is started again, and its groups go on.
    first = next(pid for pid in up.children().values() if pid != second and _is_consumers(pid))
    os.kill(second, signal.SIGKILL)
    until(lambda: up.restarts("consumers-2") == 1, "the consumers-2 restart counted")
    until(lambda: _second_consumers(up) not in (None, second), "a new consumers-2")
    _post_rating(up, "dave")
    _visible_from(up, "dave", workers)
    assert up.restarts("consumers") == 0 and _is_consumers(first)
    assert psutil.Process(_second_consumers(up)).nice() == 7  # a restarted one too


def _is_consumers(pid: int) -> bool:
    try:
        return "consumers" in psutil.Process(pid).cmdline()
    except psutil.Error:
        return False


def _second_consumers(up: Up) -> int | None:
    """The consumers process without the training jobs (``consumers-2``)."""
    for pid in up.children().values():
        try:
            if "--without-training-jobs" in psutil.Process(pid).cmdline():
                return pid
        except psutil.Error:  # just died
            continue
    return None
