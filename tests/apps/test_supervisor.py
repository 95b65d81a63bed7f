"""The generic supervisor (apps/supervisor.py) with tiny Python children."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import psutil
import pytest
from prometheus_client import CollectorRegistry

from streamrec.apps.supervisor import Backoff, ChildFailed, ChildSpec, Supervisor

# A child that notes "start <name> <pid>" in a shared log, is ready at once (or never, or
# exits, as told), and notes "stop <name> <pid>" on SIGTERM (or ignores it, as told).
CHILD = textwrap.dedent(
    """
    import os, pathlib, signal, subprocess, sys
    name, log, mode = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3]
    def note(what):
        with log.open("a") as f:
            f.write(f"{what} {name} {os.getpid()}\\n")
    note("start")
    if mode == "exit":
        sys.exit(3)
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        # a grandchild in its process group, which must go with it
        grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        note(f"grandchild-{grandchild.pid}")
    else:
        def stop(*_):
            note("stop")
            sys.exit(0)
        signal.signal(signal.SIGTERM, stop)
    pathlib.Path(os.environ["STREAMREC_READY_FILE"]).touch()
    while True:
        signal.pause()
    """
)
HANG_GUARD_SECONDS = 60.0  # only against a hang: nothing here should come near it


def child(name: str, log: Path, *, mode: str = "run", stage: int = 0, **kw: object) -> ChildSpec:
    return ChildSpec(
        name=name,
        argv=[sys.executable, "-c", CHILD, name, str(log), mode],
        env=dict(os.environ),
        stage=stage,
        **kw,  # type: ignore[arg-type]
    )


def lines(log: Path) -> list[tuple[str, str]]:
    """(what, name) of each line of the log."""
    if not log.exists():
        return []
    return [tuple(line.split()[:2]) for line in log.read_text().splitlines()]  # type: ignore[misc]


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(HANG_GUARD_SECONDS):
        while not condition():
            await asyncio.sleep(0.02)


def restarts_metric(registry: CollectorRegistry, name: str) -> float | None:
    return registry.get_sample_value("streamrec_child_restarts_total", {"child": name})


@pytest.fixture
async def supervised(tmp_path: Path) -> AsyncIterator[Callable[..., Supervisor]]:
    """Build supervisors that are stopped at the end whatever the test did."""
    built: list[Supervisor] = []

    def build(*children: ChildSpec, **kw: object) -> Supervisor:
        options: dict[str, object] = {"backoff": Backoff(initial=0.01, maximum=0.05)}
        options.update(kw)
        supervisor = Supervisor(children, tmp_path / "run", **options)  # type: ignore[arg-type]
        built.append(supervisor)
        return supervisor

    yield build
    for supervisor in built:
        await supervisor.stop()


async def test_starts_in_stage_order_and_stops_in_reverse(
    tmp_path: Path, supervised: Callable[..., Supervisor], caplog: pytest.LogCaptureFixture
) -> None:
    log = tmp_path / "log"
    supervisor = supervised(
        child("api", log, stage=2),
        child("services", log, stage=0),
        child("consumers", log, stage=1),
    )
    await supervisor.start()
    assert lines(log) == [("start", "services"), ("start", "consumers"), ("start", "api")]
    pids = {c.name: c.pid for c in supervisor.running()}
    assert [c.name for c in supervisor.running()] == ["services", "consumers", "api"]
    assert all(pids.values())

    caplog.set_level(logging.INFO, logger="streamrec.apps.supervisor")
    await supervisor.stop()
    assert lines(log)[3:] == [("stop", "api"), ("stop", "consumers"), ("stop", "services")]
    said = [r.message for r in caplog.records if r.name == "streamrec.apps.supervisor"]
    assert [m.split(" in ")[0] for m in said] == [
        "stopping api",
        "stopped api",
        "stopping consumers",
        "stopped consumers",
        "stopping services",
        "stopped services",
    ]
    assert not any(psutil.pid_exists(pid) for pid in pids.values() if pid)
    assert all(c.pid is None for c in supervisor.running())


async def test_a_child_that_dies_is_restarted_and_counted(
    tmp_path: Path, supervised: Callable[..., Supervisor], caplog: pytest.LogCaptureFixture
) -> None:
    log = tmp_path / "log"
    registry = CollectorRegistry()
    supervisor = supervised(child("a", log), child("b", log, stage=1), registry=registry)
    await supervisor.start()
    stop = asyncio.Event()
    supervising = asyncio.create_task(supervisor.supervise(stop))
    first = {c.name: c.pid for c in supervisor.running()}
    assert restarts_metric(registry, "b") == 0

    os.kill(first["b"], signal.SIGKILL)  # type: ignore[arg-type]
    await until(lambda: supervisor.restarts("b") == 1 and _pid(supervisor, "b") is not None)
    assert _pid(supervisor, "b") != first["b"]
    assert _pid(supervisor, "a") == first["a"]  # the others are left alone
    assert restarts_metric(registry, "b") == 1
    assert any("b (pid" in r.message and "restarting it" in r.message for r in caplog.records)
    await until(lambda: lines(log).count(("start", "b")) == 2)

    stop.set()
    await supervising
    assert all(c.pid is None for c in supervisor.running())


async def test_the_dependents_of_a_dead_child_are_restarted_after_it(
    tmp_path: Path, supervised: Callable[..., Supervisor]
) -> None:
    log = tmp_path / "log"
    supervisor = supervised(
        child("services", log),
        child("consumers", log, stage=1, depends_on=("services",)),
        child("api", log, stage=2, depends_on=("consumers",)),
        child("other", log, stage=1),
    )
    await supervisor.start()
    stop = asyncio.Event()
    supervising = asyncio.create_task(supervisor.supervise(stop))
    first = {c.name: c.pid for c in supervisor.running()}
    before = len(lines(log))

    os.kill(first["services"], signal.SIGKILL)  # type: ignore[arg-type]
    await until(lambda: len(lines(log)) == before + 5)
    # The transitive dependents were stopped (SIGTERM), then started after what they depend
    # on; the unrelated child kept running.
    assert lines(log)[before:] == [
        ("stop", "api"),
        ("stop", "consumers"),
        ("start", "services"),
        ("start", "consumers"),
        ("start", "api"),
    ]
    assert _pid(supervisor, "other") == first["other"]
    assert supervisor.restarts("services") == 1
    assert supervisor.restarts("consumers") == 0  # stopped on purpose, not a death

    stop.set()
    await supervising


async def test_a_child_that_exits_before_it_is_ready_fails_the_start(
    tmp_path: Path, supervised: Callable[..., Supervisor]
) -> None:
    log = tmp_path / "log"
    supervisor = supervised(child("services", log), child("api", log, stage=1, mode="exit"))
    with pytest.raises(ChildFailed, match="api exited with status 3 before it was ready"):
        await supervisor.start()
    # What had started was stopped again.
    assert lines(log) == [("start", "services"), ("start", "api"), ("stop", "services")]
    assert all(c.pid is None for c in supervisor.running())


async def test_a_child_that_ignores_sigterm_is_killed_with_its_process_group(
    tmp_path: Path, supervised: Callable[..., Supervisor]
) -> None:
    log = tmp_path / "log"
    supervisor = supervised(child("stubborn", log, mode="stubborn"), stop_seconds=0.5)
    await supervisor.start()
    pid = _pid(supervisor, "stubborn")
    grandchild = int(next(w for w, _ in lines(log) if w.startswith("grandchild-")).split("-")[1])
    assert psutil.pid_exists(grandchild)

    await supervisor.stop()
    assert pid is not None and not psutil.pid_exists(pid)
    await until(lambda: not _alive(grandchild))


# Runs a supervisor of one child in a process of its own, and writes the child's pid.
SUPERVISOR_SCRIPT = textwrap.dedent(
    """
    import asyncio, os, sys
    from pathlib import Path
    from streamrec.apps.supervisor import ChildSpec, Supervisor

    async def main(run_dir, child_argv):
        supervisor = Supervisor([ChildSpec("child", child_argv, dict(os.environ))], run_dir)
        await supervisor.start()
        (run_dir / "child.pid").write_text(str(supervisor.running()[0].pid))
        await supervisor.supervise(asyncio.Event())

    asyncio.run(main(Path(sys.argv[1]), sys.argv[2:]))
    """
)


def test_children_stop_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    log = tmp_path / "log"
    run_dir = tmp_path / "run"
    child_argv = [sys.executable, "-c", CHILD, "child", str(log), "run"]
    supervisor = subprocess.Popen(
        [sys.executable, "-c", SUPERVISOR_SCRIPT, str(run_dir), *child_argv],
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        asyncio.run(until(lambda: (run_dir / "child.pid").exists()))
        child_pid = int((run_dir / "child.pid").read_text())
        assert psutil.Process(child_pid).ppid() == supervisor.pid

        supervisor.kill()  # SIGKILL: the supervisor runs no code of its own
        supervisor.wait()
        # The kernel sent the child SIGTERM (PR_SET_PDEATHSIG): it stopped as on Ctrl-C.
        asyncio.run(until(lambda: not _alive(child_pid)))
        assert ("stop", "child") in lines(log)
    finally:
        supervisor.kill()
        supervisor.wait()


def _pid(supervisor: Supervisor, name: str) -> int | None:
    return next(c.pid for c in supervisor.running() if c.name == name)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
