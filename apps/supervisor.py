"""A small supervisor of named child processes (``streamrec up`` runs its roles under one).

Each child is a command (argv and its whole environment) with a *stage*: the children of a stage
start together once every child of the stages before it is ready, and stop together before the
stages before them. A child says it is ready by creating the file named in its
``STREAMREC_READY_FILE`` (``mark_ready``), which the supervisor removes before every start.

* **Restarts.** A child that exits while the system runs is started again after a backoff
  (``Backoff``: doubling from ``initial`` up to ``maximum``, back to ``initial`` once a child has
  stayed up ``reset_after`` seconds), with one log line and ``streamrec_child_restarts_total
  {child}`` counted. The children that ``depends_on`` it (transitively) are stopped first and
  started again once it is ready: they were attached to what died. A child that exits before it
  was ever ready during the first start stops the whole start instead (``ChildFailed``): the
  same error would come back on every restart.
* **Stopping** (``stop``): SIGTERM to every child of the last stage, a wait of up to
  ``stop_seconds`` for them, SIGKILL to the process group of any still running (grandchildren
  included), then the stage before. Each child runs in a process group of its own, so a Ctrl-C
  in the terminal reaches the supervisor only and the order holds.
* **If the supervisor itself dies** (SIGKILL, a crash), every child gets SIGTERM from the
  kernel (Linux ``PR_SET_PDEATHSIG``, set by a two-line exec wrapper before the child's own
  command runs; a child whose supervisor is already gone by then exits at once) and stops as
  on Ctrl-C, but all at once rather than in stage order. The signal is tied to the thread that
  started the child: children are started from the event loop's thread only. Elsewhere than
  Linux the children are left running.

Light on purpose: children import ``mark_ready`` from here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = logging.getLogger(__name__)

READY_FILE_ENV = "STREAMREC_READY_FILE"

# Run before the child's own command (``python -c``, then exec: the pid, and so the parent,
# stay the same): SIGTERM when the parent dies; exit now if it died before prctl ran.
_DIE_WITH_PARENT = """\
import ctypes, os, signal, sys
if sys.platform.startswith("linux"):
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != int(sys.argv[1]):
        sys.exit(1)
os.execvp(sys.argv[2], sys.argv[2:])
"""


def mark_ready() -> None:
    """Tell the supervisor this process is ready (no-op outside one)."""
    path = os.environ.get(READY_FILE_ENV)
    if path:
        Path(path).touch()


def report_failure(line: str) -> bool:
    """Hand the supervisor the one line saying why this process stops (it logs it, with the
    child's name); False outside a supervisor (the caller logs it then)."""
    path = os.environ.get(READY_FILE_ENV)
    if not path:
        return False
    _failure_file(Path(path)).write_text(line)
    return True


def _failure_file(ready_file: Path) -> Path:
    return ready_file.with_suffix(".failed")


def _failure(ready_file: Path) -> str | None:
    try:
        return _failure_file(ready_file).read_text().strip() or None
    except FileNotFoundError:
        return None


class ChildFailed(Exception):
    """A child exited before it was ready while the supervisor started (the message says
    which, with its exit status; the child's own output says why)."""


@dataclass(frozen=True)
class ChildSpec:
    """One child: ``argv`` run with exactly ``env`` (pass ``os.environ`` plus what it needs)."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str]
    stage: int = 0
    depends_on: tuple[str, ...] = ()  # restarted (stopped, then started) when one of these is
    address: str = ""  # where it serves, for the banner
    role: str = ""  # what it is, for the banner
    pass_fds: tuple[int, ...] = ()  # file descriptors it inherits (a listening socket)


@dataclass(frozen=True)
class Backoff:
    initial: float = 0.5
    maximum: float = 30.0
    reset_after: float = 60.0  # up this long: the next death waits ``initial`` again

    def delay(self, failures: int) -> float:
        return float(min(self.initial * 2 ** max(failures - 1, 0), self.maximum))


@dataclass
class _Child:
    spec: ChildSpec
    ready_file: Path
    process: asyncio.subprocess.Process | None = None
    waiter: asyncio.Task[int] | None = None
    pid: int = 0  # of its last start (for the log once it has exited)
    started_at: float = 0.0
    failures: int = 0  # deaths in a row without staying up ``Backoff.reset_after``
    restarts: int = 0


@dataclass(frozen=True)
class RunningChild:
    name: str
    role: str
    pid: int | None
    address: str
    restarts: int


@dataclass
class Supervisor:
    """Start, watch, restart and stop ``children`` (see the module's docstring).

    ``run_dir`` holds the ready files. ``registry``: where the restart counter is registered
    (none: not exported). ``clock``: monotonic seconds, for the backoff's reset.
    """

    children: Sequence[ChildSpec]
    run_dir: Path
    stop_seconds: float = 10.0
    ready_timeout: float = 300.0
    backoff: Backoff = field(default_factory=Backoff)
    registry: CollectorRegistry | None = None
    clock: Callable[[], float] = time.monotonic
    poll_seconds: float = 0.05

    def __post_init__(self) -> None:
        names = [spec.name for spec in self.children]
        if len(set(names)) != len(names):
            raise ValueError(f"child names must be unique: {names}")
        unknown = {d for spec in self.children for d in spec.depends_on} - set(names)
        if unknown:
            raise ValueError(f"depends_on names no child: {sorted(unknown)}")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._children = {
            spec.name: _Child(spec, self.run_dir / f"{spec.name}.ready") for spec in self.children
        }
        self._stopped = False  # once stop() ran, nothing starts again
        self._restarts_metric = None
        if self.registry is not None:
            from prometheus_client import Counter  # only where metrics are exported

            self._restarts_metric = Counter(
                "streamrec_child_restarts",
                "Child processes of `streamrec up` started again after they died",
                ["child"],
                registry=self.registry,
            )
            for name in names:
                self._restarts_metric.labels(name)  # 0 from the start, not absent

    # -- what runs -------------------------------------------------------------------------
    def running(self) -> list[RunningChild]:
        """Every child in start order, with its current pid (None while it is down)."""
        return [
            RunningChild(
                child.spec.name,
                child.spec.role,
                self._pid(child),
                child.spec.address,
                child.restarts,
            )
            for child in self._in_stage_order()
        ]

    def restarts(self, name: str) -> int:
        return self._children[name].restarts

    # -- start -------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start every stage in order, each once the previous one is ready. ``ChildFailed``
        (after stopping what started) when a child exits before it is ready."""
        try:
            for stage in self._stages():
                await self._start_all(stage, first=True)
        except BaseException:
            await self.stop()
            raise

    async def _start_all(self, children: Sequence[_Child], *, first: bool) -> None:
        for child in children:
            await self._spawn(child)
        await asyncio.gather(*(self._wait_ready(child, first=first) for child in children))

    async def _spawn(self, child: _Child) -> None:
        if self._stopped:
            # Stopped meanwhile: a start or restart in progress ends here.
            raise ChildFailed(f"{child.spec.name} not started: the supervisor is stopping")
        child.ready_file.unlink(missing_ok=True)
        _failure_file(child.ready_file).unlink(missing_ok=True)
        env = {**child.spec.env, READY_FILE_ENV: str(child.ready_file)}
        argv = [sys.executable, "-I", "-c", _DIE_WITH_PARENT, str(os.getpid()), *child.spec.argv]
        child.process = await asyncio.create_subprocess_exec(
            *argv,
            env=env,
            process_group=0,
            stdin=asyncio.subprocess.DEVNULL,
            pass_fds=child.spec.pass_fds,
        )
        child.waiter = asyncio.create_task(child.process.wait(), name=f"wait-{child.spec.name}")
        child.started_at = self.clock()
        child.pid = child.process.pid
        log.info("started %s (pid %d)", child.spec.name, child.process.pid)

    async def _wait_ready(self, child: _Child, *, first: bool) -> None:
        """Until ``child`` is ready. If it exits first: ``ChildFailed`` on the first start;
        after it, the supervision loop sees the exit and restarts it."""
        deadline = self.clock() + self.ready_timeout
        while not child.ready_file.exists():
            if child.waiter is not None and child.waiter.done():
                if first:
                    # The child's own line when it gave one (it names what failed).
                    raise ChildFailed(
                        _failure(child.ready_file)
                        or f"{child.spec.name} exited with status {child.waiter.result()} "
                        "before it was ready (its output above says why)"
                    )
                return
            if self.clock() > deadline:
                # Hung in start-up: killed, and then handled as any child that died.
                log.error(
                    "%s not ready after %.0f s: killing it", child.spec.name, self.ready_timeout
                )
                self._signal(child, signal.SIGKILL, group=True)
                if first:
                    raise ChildFailed(f"{child.spec.name} was not ready in time")
                return
            await asyncio.sleep(self.poll_seconds)

    # -- supervise ---------------------------------------------------------------------------
    async def supervise(self, stop: asyncio.Event) -> None:
        """Restart children that die until ``stop`` is set, then stop them all."""
        stopping = asyncio.create_task(stop.wait(), name="supervisor-stop")
        try:
            while not stop.is_set() and not self._stopped:
                waiters = {c.waiter for c in self._children.values() if c.waiter is not None}
                done, _ = await asyncio.wait(
                    {stopping, *waiters}, return_when=asyncio.FIRST_COMPLETED
                )
                if stop.is_set() or self._stopped:
                    break
                dead = next(c for c in self._in_stage_order() if c.waiter in done)
                restart = asyncio.create_task(self._restart(dead), name=f"restart-{dead}")
                await asyncio.wait({stopping, restart}, return_when=asyncio.FIRST_COMPLETED)
                if not restart.done():
                    restart.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await restart
                elif restart.exception() is not None and not self._stopped:
                    raise restart.exception()  # type: ignore[misc]
        finally:
            stopping.cancel()
            await self.stop()

    async def _restart(self, dead: _Child) -> None:
        status = dead.waiter.result() if dead.waiter is not None else None
        up_for = self.clock() - dead.started_at
        dead.failures = 1 if up_for >= self.backoff.reset_after else dead.failures + 1
        delay = self.backoff.delay(dead.failures)
        dependents = self._dependents(dead.spec.name)
        dead.restarts += 1
        if self._restarts_metric is not None:
            self._restarts_metric.labels(dead.spec.name).inc()
        reason = _failure(dead.ready_file)
        log.warning(
            "%s (pid %s) exited with status %s after %.1f s%s; restarting it in %.1f s "
            "(restart %d)%s",
            dead.spec.name,
            dead.pid,
            status,
            up_for,
            f" ({reason})" if reason else "",
            delay,
            dead.restarts,
            f", and {', '.join(c.spec.name for c in dependents)} after it" if dependents else "",
        )
        dead.waiter = None
        for stage in reversed(self._group_by_stage(dependents)):  # last stage first, as `stop`
            await self._stop_children(stage)
        for child in dependents:
            child.waiter = None  # stopped on purpose: not a death to restart
        await asyncio.sleep(delay)
        await self._start_all([dead], first=False)
        if not dead.ready_file.exists():
            # It died again before it was ready: its dependents stay down until it is (the
            # next restart of it starts them, as they are its dependents still).
            return
        for stage in self._group_by_stage(dependents):
            await self._start_all(stage, first=False)

    def _dependents(self, name: str) -> list[_Child]:
        found: set[str] = set()
        frontier = {name}
        while frontier:
            frontier = {
                c.spec.name
                for c in self._children.values()
                if set(c.spec.depends_on) & frontier and c.spec.name not in found
            }
            found |= frontier
        return [c for c in self._in_stage_order() if c.spec.name in found]

    # -- stop --------------------------------------------------------------------------------
    async def stop(self) -> None:
        """Stop every child, last stage first (idempotent); nothing starts again after it."""
        self._stopped = True
        for stage in reversed(self._stages()):
            await self._stop_children(stage)

    async def _stop_children(self, children: Sequence[_Child]) -> None:
        running = [c for c in children if self._pid(c) is not None]
        if not running:
            return
        # Said as it happens: a stop takes seconds per stage, and Ctrl-C should be answered.
        log.info("stopping %s", ", ".join(c.spec.name for c in running))
        started = time.monotonic()
        for child in running:
            self._signal(child, signal.SIGTERM, group=False)
        await asyncio.gather(*(self._reap(child) for child in running))
        log.info(
            "stopped %s in %.1f s",
            ", ".join(c.spec.name for c in running),
            time.monotonic() - started,
        )

    async def _reap(self, child: _Child) -> None:
        process = child.process
        if process is None:
            return
        try:
            async with asyncio.timeout(self.stop_seconds):
                await process.wait()
        except TimeoutError:
            log.warning(
                "%s (pid %d) still running %.0f s after SIGTERM: killing it",
                child.spec.name,
                process.pid,
                self.stop_seconds,
            )
        # Whatever it left in its process group (workers, a training process) goes with it.
        self._signal(child, signal.SIGKILL, group=True)
        await process.wait()
        child.ready_file.unlink(missing_ok=True)

    def _signal(self, child: _Child, signum: signal.Signals, *, group: bool) -> None:
        process = child.process
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(process.pid, signum)  # its group's id is its pid (process_group=0)
            elif process.returncode is None:
                process.send_signal(signum)

    # -- helpers -------------------------------------------------------------------------------
    def _pid(self, child: _Child) -> int | None:
        process = child.process
        return process.pid if process is not None and process.returncode is None else None

    def _in_stage_order(self) -> list[_Child]:
        return [child for stage in self._stages() for child in stage]

    def _stages(self) -> list[list[_Child]]:
        return self._group_by_stage(list(self._children.values()))

    @staticmethod
    def _group_by_stage(children: Sequence[_Child]) -> list[list[_Child]]:
        stages: dict[int, list[_Child]] = {}
        for child in children:
            stages.setdefault(child.spec.stage, []).append(child)
        return [stages[key] for key in sorted(stages)]
