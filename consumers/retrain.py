"""Consumer group ``streamrec-retrain``: the learning loop that runs by itself.

It reads the ratings (what the embedding models train on), counts them per model
(``trainer.retrain.RetrainTrigger``) and, when a model is due, runs a round for it: a candidate
trained in a child process (``trainer.retrain.train_candidate``: warm-started, CPU-budgeted,
off this event loop), then the decision in this process (``trainer.retrain.conclude_round``:
promote and publish, or reject; retire old versions). Rounds run one model at a time; events
keep being counted meanwhile. The batch is acknowledged as soon as it is counted: the count is
advice, the archive (up to its watermark) is what a round trains on, so a restart loses at
most the count, which the loop seeds again from the archive beyond each live version.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from collections.abc import Awaitable, Callable, Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from faststream.kafka import KafkaBroker

from streamrec.consumers.decode import DecodedBatch
from streamrec.consumers.dlq import DeadLetterSink
from streamrec.consumers.subscriber import subscribe_batches
from streamrec.core.errors import StreamrecError
from streamrec.core.metrics import Metrics
from streamrec.core.settings import Settings
from streamrec.schemas.events import RatingEvent, SourcedEvent
from streamrec.schemas.topics import ConsumerGroup
from streamrec.stores.factory import Stores
from streamrec.trainer.retrain import (
    Candidate,
    RetrainConfig,
    RetrainTrigger,
    RoundReport,
    budget_process,
    conclude_round,
    new_since_live,
    train_candidate,
)

GROUP = ConsumerGroup.RETRAIN
log = logging.getLogger(__name__)

RunRound = Callable[[str], Awaitable[RoundReport]]
# What a round may fail with and the loop survives (the next round tries again).
ROUND_ERRORS: tuple[type[Exception], ...] = (StreamrecError, OSError)


def count_interactions(events: Sequence[SourcedEvent]) -> int:
    return sum(1 for sourced in events if isinstance(sourced.event, RatingEvent))


class RetrainLoop:
    """Counts, decides when, and runs rounds one at a time in a background task."""

    def __init__(
        self,
        trigger: RetrainTrigger,
        run_round: RunRound,
        check_every_seconds: float = 1.0,
    ) -> None:
        self.trigger = trigger
        self._run_round = run_round
        self._check_every = check_every_seconds
        self._rounds: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self.reports: list[RoundReport] = []  # the newest last (bounded)

    @property
    def running(self) -> bool:
        return self._rounds is not None and not self._rounds.done()

    def observe(self, events: Sequence[SourcedEvent]) -> int:
        counted = count_interactions(events)
        self.trigger.observe(counted)
        self.maybe_start()
        return counted

    def maybe_start(self) -> list[str]:
        """Start a round for every due model unless one is running; the models started."""
        if self.running:
            return []
        due = self.trigger.due()
        if due:
            self.trigger.started(due)
            self._rounds = asyncio.create_task(self._run(due), name="retrain rounds")
        return due

    async def _run(self, models: list[str]) -> None:
        for model in models:
            log.info("retrain round for %s started", model)  # its span, with the summary's end
            try:
                report = await self._run_round(model)
            except ROUND_ERRORS as exc:
                log.error("retrain round for %s failed (the next one tries again): %s", model, exc)
                continue
            log.info("%s", report.summary())
            self.reports = [*self.reports[-99:], report]

    async def _tick(self) -> None:
        """The time threshold fires on a quiet stream too (no batch would wake the loop)."""
        while True:
            await asyncio.sleep(self._check_every)
            self.maybe_start()

    async def start(self) -> None:
        self._ticker = asyncio.create_task(self._tick(), name="retrain ticker")

    async def wait_idle(self) -> None:
        """Until the running round (if any) is done: for tests and a clean stop."""
        if self._rounds is not None:
            await asyncio.shield(self._rounds)

    async def stop(self) -> None:
        for task in (self._ticker, self._rounds):
            if task is not None and not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)


class TrainingProcessDied(StreamrecError):
    """The child process training a candidate ended without an answer (killed, crashed)."""


def _serve_rounds(requests: Connection, threads: int, nice: int) -> None:
    """The training child's life: take the CPU budget once, then train one candidate per
    request and send back the outcome, until the parent closes the pipe."""
    budget_process(threads, nice)
    while True:
        try:
            args = requests.recv()
        except EOFError:  # the parent closed the pipe (or died): nothing more to train
            return
        try:
            outcome: tuple[str, Any] = ("ok", train_candidate(*args))
        except Exception as exc:  # not swallowed: the parent raises it (pickled back)
            outcome = ("error", exc)
        requests.send(outcome)


class ProcessRounds:
    """Rounds whose candidate is trained in a child process, off this process's event loop and
    within its CPU budget. The child lives across rounds (spawning one and importing PyTorch
    cost ~7 s per round, measured in the prequential benchmark) and is replaced when it dies
    or after ``rounds_per_child`` rounds (memory a long life might accumulate). A crash or a
    kill loses only the attempt in progress; ``close`` ends the child at once."""

    def __init__(self, stores: Stores, config: RetrainConfig, rounds_per_child: int = 50) -> None:
        self._stores = stores
        self._config = config
        self._rounds_per_child = rounds_per_child
        self._context = multiprocessing.get_context("spawn")  # no fork of a threaded process
        self._child: BaseProcess | None = None
        self._pipe: Connection | None = None
        self._served = 0  # rounds the current child has trained
        self._busy = False

    @property
    def child_pid(self) -> int | None:
        """The training child's pid while it lives (it serves the next round too)."""
        child = self._child
        return child.pid if child is not None and child.is_alive() else None

    def _ready_child(self) -> Connection:
        if self._pipe is not None and (
            self.child_pid is None or self._served >= self._rounds_per_child
        ):
            self._end_child()
        if self._pipe is None:
            parent_end, child_end = self._context.Pipe(duplex=True)
            child = self._context.Process(
                target=_serve_rounds,
                args=(child_end, self._config.threads, self._config.nice),
                name="streamrec-retrain-trainer",
                daemon=True,  # ends with this process
            )
            child.start()
            child_end.close()  # the child holds the other end: its death means EOF here
            self._child, self._pipe, self._served = child, parent_end, 0
        return self._pipe

    def _end_child(self) -> None:
        pipe, child = self._pipe, self._child
        self._pipe = self._child = None
        if pipe is not None:
            pipe.close()  # an idle child reads EOF and returns
        if child is not None:
            child.join(timeout=5)
            if child.is_alive():
                child.terminate()
                child.join()

    def _train(self, model: str) -> Candidate:
        pipe = self._ready_child()
        self._busy = True
        try:
            pipe.send((self._stores.settings, model, self._config))
            kind, value = pipe.recv()
        except (EOFError, OSError):
            child = self._child
            self._end_child()  # joins it: its exit code is known after
            exit_code = child.exitcode if child is not None else None
            raise TrainingProcessDied(
                f"the process training {model} ended without an answer (exit code {exit_code})"
            ) from None
        finally:
            self._busy = False
        self._served += 1
        if kind == "error":
            raise value
        candidate: Candidate = value
        return candidate

    @property
    def training(self) -> bool:
        return self._busy and self.child_pid is not None

    async def __call__(self, model: str) -> RoundReport:
        candidate = await asyncio.to_thread(self._train, model)
        return await asyncio.to_thread(conclude_round, self._stores, candidate, self._config)

    def close(self) -> None:
        """End the child now, a training in progress included (its attempt is lost; the next
        round starts a new child)."""
        child = self._child
        if child is not None and child.is_alive():
            child.terminate()
        if not self._busy:  # a training thread, if any, cleans up after its own EOF
            self._end_child()


def build_loop(stores: Stores, config: RetrainConfig) -> tuple[RetrainLoop, ProcessRounds]:
    """The loop of a consumer process and the rounds it runs (start it with ``start_loop``)."""
    rounds = ProcessRounds(stores, config)
    return RetrainLoop(RetrainTrigger(config), rounds), rounds


async def start_loop(loop: RetrainLoop, stores: Stores) -> None:
    """Seed the counts from the archive beyond each model's live version (a restart does not
    forget what already arrived), then start the loop's clock."""
    for model in loop.trigger.models:
        loop.trigger.seed(model, await asyncio.to_thread(new_since_live, stores, model))
    await loop.start()


def register(
    broker: KafkaBroker,
    loop: RetrainLoop,
    dead_letters: DeadLetterSink,
    metrics: Metrics,
    settings: Settings,
) -> None:
    """Subscribe the retrain group to the ratings (what the embedding models train on)."""

    async def apply(batch: DecodedBatch) -> int:
        return loop.observe(batch.events)

    subscribe_batches(broker, GROUP, apply, dead_letters, metrics, settings, retry=None)
