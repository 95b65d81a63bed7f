"""Consumer lag per group, topic and partition, with a Burrow-style status per group and partition.

Lag is end offset - committed offset, read with ListOffsets and OffsetFetch, which both the
librdkafka mock cluster and real Kafka serve (the mock serves neither ListGroups nor
DescribeGroups, so the groups are those of ``schemas.topics.GROUP_TOPICS`` and member counts are
only known on real Kafka). A partition the group never committed counts from the log start.

Lag in seconds is the age of the oldest unconsumed record: the Kafka timestamp of the record at
the committed offset, fetched once per (partition, offset) and cached, since a record's
timestamp never changes (a stalled group costs no fetch at all). It is measured, not estimated
from a produce rate; it is left out (null) when the record could not be fetched in time.

``LagReader`` is the one reader a process keeps: one admin client and one group-less consumer,
long-lived, read at most every ``refresh_seconds`` (a background task refreshes it; a call in
between gets the cached report in microseconds). Each reading appends a sample per group and
partition to a sliding window, from which the status is evaluated (``partition_status``) after
LinkedIn Burrow's consumer lag evaluation rules, adapted to offsets sampled by polling (Kafka's
OffsetFetch carries no commit time, so "committing" is seen as "the committed offset moved"):

1. No sample -> UNKNOWN.
2. Lag zero in any sample of the window -> OK (Burrow rule 1: the group caught up).
3. The committed offset went backwards between two samples -> ERR (Burrow's REWIND).
4. The committed offset has not moved for ``stop_seconds`` -> STOP (adapts Burrow rule 3, which
   compares the time since the last commit with the window's span).
5. The window is not complete yet (it spans less than ``window_seconds``) -> UNKNOWN.
6. The committed offset did not move over the whole window -> STALL (Burrow rule 4).
7. The committed offset moved, the lag never decreased from one sample to the next and ended
   higher than it started -> WARN (Burrow rule 5: the group is slower than the producers).
8. Otherwise -> OK (lagging but catching up).

A group's status is the worst of its partitions', in the order OK < UNKNOWN < WARN < STALL <
STOP < ERR; a group without partitions is UNKNOWN.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import IncompatibleBrokerVersion, KafkaError

from streamrec.core.errors import ServiceUnavailable
from streamrec.core.settings import Settings
from streamrec.schemas.api import GroupLag, LagReport, LagStatus, PartitionLag
from streamrec.schemas.topics import GROUP_TOPICS, ConsumerGroup, Topic

__all__ = [
    "ALL_GROUPS",
    "GroupLag",
    "LagReader",
    "LagReport",
    "LagStatus",
    "PartitionLag",
    "PartitionWindow",
    "Sample",
    "StatusRules",
    "consumer_lag",
    "group_status",
    "partition_status",
]

log = logging.getLogger(__name__)

ALL_GROUPS: tuple[str, ...] = tuple(group.value for group in GROUP_TOPICS)
Clock = Callable[[], float]
_SEVERITY = {
    status: rank
    for rank, status in enumerate(
        (
            LagStatus.OK,
            LagStatus.UNKNOWN,
            LagStatus.WARN,
            LagStatus.STALL,
            LagStatus.STOP,
            LagStatus.ERR,
        )
    )
}
_KAFKA_ERRORS = (KafkaError, OSError, TimeoutError)


# -- the status rules: pure functions over a window of samples ----------------------------------


@dataclass(frozen=True)
class Sample:
    """One reading of one group's partition."""

    at: float  # clock time of the reading (seconds)
    end_offset: int
    position: int  # the committed offset, or the log start where the group never committed
    lag: int


@dataclass(frozen=True)
class StatusRules:
    window_seconds: float = 60.0  # how far back the window reaches (rules 5-7)
    stop_seconds: float = 300.0  # no movement for this long while lagging: STOP (rule 4)

    @classmethod
    def for_settings(cls, settings: Settings) -> StatusRules:
        return cls(settings.lag_window_seconds, settings.lag_stop_seconds)


def partition_status(
    samples: Sequence[Sample], now: float, rules: StatusRules, moved_at: float | None = None
) -> LagStatus:
    """The status of one partition from its window (oldest sample first); ``moved_at`` is when
    its committed offset was last seen to move (default: the window's first sample). The rules
    are numbered in the module docstring."""
    if not samples:
        return LagStatus.UNKNOWN
    if any(s.lag == 0 for s in samples):
        return LagStatus.OK
    pairs = list(itertools.pairwise(samples))
    if any(b.position < a.position for a, b in pairs):
        return LagStatus.ERR
    since = samples[0].at if moved_at is None else moved_at
    if now - since >= rules.stop_seconds:
        return LagStatus.STOP
    if now - samples[0].at < rules.window_seconds:
        return LagStatus.UNKNOWN
    if samples[-1].position == samples[0].position:
        return LagStatus.STALL
    if all(b.lag >= a.lag for a, b in pairs) and samples[-1].lag > samples[0].lag:
        return LagStatus.WARN
    return LagStatus.OK


def group_status(statuses: Iterable[LagStatus]) -> LagStatus:
    """The worst partition status (OK < UNKNOWN < WARN < STALL < STOP < ERR); UNKNOWN if none."""
    return max(statuses, key=_SEVERITY.__getitem__, default=LagStatus.UNKNOWN)


@dataclass
class PartitionWindow:
    """The samples of one group's partition over the window, and when its offset last moved.

    Samples older than the window are dropped, except the newest of them: it anchors the window,
    so that a complete window spans at least ``window_seconds`` whatever the refresh interval.
    """

    samples: deque[Sample] = field(default_factory=deque)
    moved_at: float | None = None

    def add(self, sample: Sample, window_seconds: float) -> None:
        if not self.samples or sample.position != self.samples[-1].position:
            self.moved_at = sample.at
        self.samples.append(sample)
        horizon = sample.at - window_seconds
        while len(self.samples) > 1 and self.samples[1].at <= horizon:
            self.samples.popleft()

    def status(self, now: float, rules: StatusRules) -> LagStatus:
        return partition_status(self.samples, now, rules, self.moved_at)


# -- reading Kafka -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Offsets:
    """One reading of the offsets: per partition its log start and end; per group what it
    committed (absent: never committed); members per group where the broker says."""

    starts: dict[TopicPartition, int]
    ends: dict[TopicPartition, int]
    committed: dict[str, dict[TopicPartition, int]]
    partitions: dict[str, list[TopicPartition]]
    members: dict[str, int]


class LagReader:
    """A process's shared, cached consumer-lag reader (see the module docstring).

    ``start_background()`` reads Kafka every ``refresh_seconds`` in a task, and ``report()``
    then answers from the last reading without ever waiting for Kafka. Without the task,
    ``report()`` answers from the last reading while it is younger than ``refresh_seconds`` and
    reads Kafka again otherwise (one reading at a time, shared by concurrent callers).
    ``clock`` (Unix seconds) times the cache, the windows and the age of records: tests pass a
    fake one.
    """

    def __init__(
        self,
        bootstrap: list[str],
        groups: Sequence[str] = ALL_GROUPS,
        *,
        refresh_seconds: float = 5.0,
        rules: StatusRules | None = None,
        with_seconds: bool = True,
        clock: Clock = time.time,
        timeout_seconds: float = 5.0,
        fetch_seconds: float = 1.0,
    ) -> None:
        self.bootstrap = bootstrap
        self.groups = [str(g) for g in groups]  # ConsumerGroup or its value
        self.refresh_seconds = refresh_seconds
        self.rules = rules or StatusRules()
        self.with_seconds = with_seconds
        self._clock = clock
        self._timeout = timeout_seconds
        self._fetch_seconds = fetch_seconds  # per reading, for the timestamps of new positions
        self._admin: AIOKafkaAdminClient | None = None
        self._reader: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()
        self._latest: LagReport | None = None
        self._failure: tuple[float, ServiceUnavailable] | None = None
        self._windows: dict[tuple[str, TopicPartition], PartitionWindow] = {}
        self._record_times: dict[tuple[TopicPartition, int], float] = {}
        self._members_served = True  # until the broker says it does not serve DescribeGroups
        self._task: asyncio.Task[None] | None = None
        self.readings = 0  # successful readings of Kafka, for tests and logs

    @classmethod
    def for_settings(
        cls,
        bootstrap: list[str],
        settings: Settings,
        groups: Sequence[str] = ALL_GROUPS,
        clock: Clock = time.time,
    ) -> LagReader:
        return cls(
            bootstrap,
            groups,
            refresh_seconds=settings.lag_refresh_seconds,
            rules=StatusRules.for_settings(settings),
            clock=clock,
        )

    @property
    def latest(self) -> LagReport | None:
        """The last report read, however old (``measured_at`` says when); None before any."""
        return self._latest

    async def __aenter__(self) -> LagReader:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _fresh(self, now: float) -> bool:
        return self._latest is not None and now - self._latest.measured_at < self.refresh_seconds

    async def report(self) -> LagReport:
        """The lag now, at most ``refresh_seconds`` (plus one reading) old. With the background
        task running, the last reading at once, never waiting for Kafka; otherwise Kafka is
        read when the last reading is too old. ServiceUnavailable when Kafka did not answer
        the last reading (not retried before the interval is over)."""
        now = self._clock()
        if self._kept_fresh(now) or self._fresh(now):
            assert self._latest is not None
            return self._latest
        async with self._lock:
            now = self._clock()
            if self._fresh(now):  # read by whoever held the lock before
                assert self._latest is not None
                return self._latest
            if self._failure is not None and now - self._failure[0] < self.refresh_seconds:
                raise self._failure[1]
            return await self._refresh_locked()

    def _kept_fresh(self, now: float) -> bool:
        """The background task keeps the last reading fresh (and its last reading worked)."""
        if self._task is None or self._latest is None or self._failure is not None:
            return False
        # A background task that stopped reading (it cannot, short of a bug) is not trusted.
        return now - self._latest.measured_at < 2 * self.refresh_seconds + self._timeout

    async def refresh(self) -> LagReport:
        """Read Kafka now, whatever the age of the last reading."""
        async with self._lock:
            return await self._refresh_locked()

    def start_background(self) -> None:
        """Refresh every ``refresh_seconds`` in a task of the running loop until ``close()``."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="streamrec-lag-reader")
            self._task.add_done_callback(_log_end)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            # A failed reading is logged by it; the report keeps its last values and time.
            with contextlib.suppress(ServiceUnavailable):
                await self.refresh()
            await asyncio.sleep(max(self.refresh_seconds - (loop.time() - started), 0.0))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._disconnect()

    async def _refresh_locked(self) -> LagReport:
        try:
            async with asyncio.timeout(self._timeout):
                offsets = await self._read_offsets()
                report = await self._evaluate(offsets)
        except _KAFKA_ERRORS as exc:
            failure = ServiceUnavailable(
                f"Kafka at {', '.join(self.bootstrap)} did not answer a lag reading: "
                f"{exc or type(exc).__name__}"
            )
            if self._failure is None:
                log.warning("%s", failure)  # once per outage, not every interval
            self._failure = (self._clock(), failure)
            await self._disconnect()  # reconnect from scratch next time
            raise failure from exc
        if self._failure is not None:
            log.info("consumer lag readable again")
        self._failure = None
        self._latest = report
        self.readings += 1
        return report

    async def _connect(self) -> tuple[AIOKafkaAdminClient, AIOKafkaConsumer]:
        if self._admin is None or self._reader is None:
            await self._disconnect()
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
            reader = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap,
                enable_auto_commit=False,
                auto_offset_reset="earliest",  # a position deleted by retention: the oldest left
                max_partition_fetch_bytes=16 * 1024,  # one record per partition is used
            )
            self._admin, self._reader = admin, reader
            await admin.start()
            await reader.start()
        return self._admin, self._reader

    async def _disconnect(self) -> None:
        admin, reader = self._admin, self._reader
        self._admin = self._reader = None
        if reader is not None:
            await reader.stop()
        if admin is not None:
            await admin.close()

    async def _read_offsets(self) -> _Offsets:
        admin, reader = await self._connect()
        topics = list(dict.fromkeys(t.value for g in self.groups for t in _topics(g)))
        described = await admin.describe_topics(topics)
        by_topic = {
            topic["topic"]: [
                TopicPartition(topic["topic"], p["partition"])
                for p in sorted(topic["partitions"], key=lambda p: p["partition"])
            ]
            for topic in described
            if topic["error_code"] == 0  # a topic that does not exist yet has no lag
        }
        partitions = {
            g: [tp for t in _topics(g) for tp in by_topic.get(t.value, [])] for g in self.groups
        }
        every = [tp for tps in by_topic.values() for tp in tps]
        ends = await reader.end_offsets(every) if every else {}
        starts = await reader.beginning_offsets(every) if every else {}
        fetched = await asyncio.gather(
            *(admin.list_consumer_group_offsets(g, partitions=partitions[g]) for g in self.groups)
        )
        committed = {
            g: {tp: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}
            for g, offsets in zip(self.groups, fetched, strict=True)
        }
        return _Offsets(starts, ends, committed, partitions, await self._members(admin))

    async def _members(self, admin: AIOKafkaAdminClient) -> dict[str, int]:
        """Members per group (DescribeGroups); empty where the broker does not serve it."""
        if not self._members_served:
            return {}
        try:
            responses = await admin.describe_consumer_groups(self.groups)
        except IncompatibleBrokerVersion:
            self._members_served = False
            log.info("the broker does not serve DescribeGroups: no member counts in lag reports")
            return {}
        return {
            described["group"]: len(described.get("members") or [])
            for response in responses
            for described in response.to_object().get("groups", [])
            if not described.get("error_code")
        }

    async def _evaluate(self, offsets: _Offsets) -> LagReport:
        now = self._clock()
        positions = {
            (g, tp): offsets.committed[g].get(tp, offsets.starts[tp])
            for g in self.groups
            for tp in offsets.partitions[g]
        }
        lagging = {(tp, pos) for (g, tp), pos in positions.items() if offsets.ends[tp] > pos}
        if self.with_seconds:
            await self._fetch_record_times(lagging)
        groups = []
        for g in self.groups:
            rows = []
            for tp in offsets.partitions[g]:
                position, end = positions[(g, tp)], offsets.ends[tp]
                lag = max(end - position, 0)
                window = self._windows.setdefault((g, tp), PartitionWindow())
                window.add(Sample(now, end, position, lag), self.rules.window_seconds)
                created = self._record_times.get((tp, position))
                rows.append(
                    PartitionLag(
                        topic=tp.topic,
                        partition=tp.partition,
                        end_offset=end,
                        committed_offset=offsets.committed[g].get(tp),
                        lag=lag,
                        lag_seconds=0.0
                        if lag == 0
                        else (None if created is None else max(now - created, 0.0)),
                        status=window.status(now, self.rules),
                    )
                )
            groups.append(_group(g, rows, offsets.members.get(g)))
        # Timestamps of positions no group is at any more are never asked again.
        self._record_times = {k: v for k, v in self._record_times.items() if k in lagging}
        return LagReport(groups=groups, total_lag=sum(g.total_lag for g in groups), measured_at=now)

    async def _fetch_record_times(self, wanted: set[tuple[TopicPartition, int]]) -> None:
        """Read the timestamp of the record at each (partition, offset) not known yet, within
        ``fetch_seconds`` in all; one consumer holds one position per partition, so positions
        of several groups on one partition are read in rounds."""
        missing: dict[TopicPartition, list[int]] = {}
        for tp, offset in sorted(wanted - self._record_times.keys()):
            missing.setdefault(tp, []).append(offset)
        if not missing:
            return
        reader = self._reader
        assert reader is not None
        deadline = time.monotonic() + self._fetch_seconds
        rounds = max(len(offsets) for offsets in missing.values())
        try:
            for i in range(rounds):
                todo = {tp: offsets[i] for tp, offsets in missing.items() if len(offsets) > i}
                await self._fetch_round(reader, todo, deadline)
        finally:
            reader.assign([])  # no background fetching between readings

    async def _fetch_round(
        self, reader: AIOKafkaConsumer, todo: dict[TopicPartition, int], deadline: float
    ) -> None:
        reader.assign(list(todo))
        for tp, offset in todo.items():
            reader.seek(tp, offset)
        pending = dict(todo)
        while pending and (left := deadline - time.monotonic()) > 0:
            # One record a call: aiokafka decodes a fetched batch lazily, so the rest of it
            # (hundreds of records under load) is never parsed.
            fetched = await reader.getmany(
                *pending, timeout_ms=max(int(left * 1000), 1), max_records=1
            )
            for tp, records in fetched.items():
                if records and tp in pending:
                    self._record_times[(tp, pending.pop(tp))] = records[0].timestamp / 1000.0
                    reader.pause(tp)


def _log_end(task: asyncio.Task[None]) -> None:
    """A background reader that ends other than by ``close()`` is a bug: say so, never lose it."""
    if not task.cancelled() and task.exception() is not None:
        log.error("the consumer lag reader stopped: %r", task.exception())


def _topics(group: str) -> tuple[Topic, ...]:
    return GROUP_TOPICS[ConsumerGroup(group)]


def _group(group: str, rows: list[PartitionLag], members: int | None) -> GroupLag:
    seconds = [r.lag_seconds for r in rows if r.lag_seconds is not None]
    return GroupLag(
        group=group,
        partitions=rows,
        total_lag=sum(r.lag for r in rows),
        max_lag_seconds=max(seconds) if seconds else None,
        status=group_status(r.status for r in rows),
        members=members,
    )


async def consumer_lag(
    bootstrap: list[str],
    groups: Sequence[str] = ALL_GROUPS,
    with_seconds: bool = True,
) -> LagReport:
    """One reading of the lag of each group over the topics it reads (``GROUP_TOPICS``), with
    clients opened and closed for it: for scripts and tests. A single reading has no window,
    so a lagging partition's status is UNKNOWN; a process that asks more than once keeps a
    ``LagReader``."""
    async with LagReader(bootstrap, groups, with_seconds=with_seconds) as reader:
        return await reader.refresh()
