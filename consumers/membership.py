"""One process per consumer group on the embedded broker, checked before anyone joins.

librdkafka's mock cluster cannot complete a rebalance with a second member (DESIGN §2): a second
``streamrec consume -g features`` beside the ``streamrec up`` that runs ``features`` died in
``SyncGroup: InvalidRequestError``. So on the embedded broker every process that consumes a
group first takes an exclusive ``flock`` on ``<var_dir>/groups/<group>.lock`` and writes its pid
and command into it; a second process finds the lock taken, reads who holds it and refuses at
once with one line. The kernel drops a lock when its process dies (``kill -9`` included), so a
lock is never stale. Real Kafka balances several members of a group: no locks there.

Once joined, the holder also writes its aiokafka member id into the lock file (``GroupHold``).
A process killed with SIGKILL leaves that record behind, and the broker keeps its member in the
group until the session times out: the next process's JoinGroup then waits for it, up to a
second rebalance round when the dead member was elected leader. So a process that takes a lock
over from a dead holder first sends LeaveGroup for the dead member id (``start_as_holder``), and
the join that follows completes in one round. On real Kafka the same is done by static
membership (``group.instance.id``), not by these files.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from streamrec.core.errors import StreamrecError
from streamrec.schemas.topics import ConsumerGroup

if TYPE_CHECKING:
    from faststream.kafka import KafkaBroker

LOCK_DIR = "groups"
# LeaveGroup is a shortcut, never a condition of starting: past this, join as before.
LEAVE_TIMEOUT_SECONDS = 2.0
log = logging.getLogger(__name__)


class GroupInUse(StreamrecError):
    """A consumer group that another process already consumes on the embedded broker."""


def short_name(group: ConsumerGroup | str) -> str:
    return str(group).removeprefix("streamrec-")


def _lock_path(var_dir: Path, group: ConsumerGroup) -> Path:
    return var_dir / LOCK_DIR / f"{short_name(group)}.lock"


def _holder(path: Path) -> dict[str, object]:
    try:
        found = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}  # being written right now, or unreadable: say less, refuse all the same
    return found if isinstance(found, dict) else {}


def _groups_of(var_dir: Path, pid: object) -> list[str]:
    """The groups a process holds, from the lock files it wrote."""
    held = {
        path.stem for path in (var_dir / LOCK_DIR).glob("*.lock") if _holder(path).get("pid") == pid
    }
    order = [short_name(g) for g in ConsumerGroup]  # the order of `--groups` in the docs
    return sorted(held, key=lambda name: order.index(name) if name in order else len(order))


def _refusal(var_dir: Path, taken: list[tuple[ConsumerGroup, dict[str, object]]]) -> str:
    holder = taken[0][1]
    same = [g for g, h in taken if h.get("pid") == holder.get("pid")]
    names = " and ".join(short_name(g) for g in same)
    noun = "group is" if len(same) == 1 else "groups are"
    command = str(holder.get("command") or "another process")
    pid = holder.get("pid")
    who = f"{command} (pid {pid})" if pid else command
    line = f"the {names} {noun} already consumed by {who}"
    if command == "streamrec up" and pid:
        leaving = {short_name(g) for g in same}
        keep = [name for name in _groups_of(var_dir, pid) if name not in leaving]
        option = ",".join(keep) if keep else "none"
        return (
            f"{line}; the embedded broker allows one member per group: start up with "
            f"--groups {option} to leave {'it' if len(same) == 1 else 'them'} to this process"
        )
    return (
        f"{line}; the embedded broker allows one member per group: stop that process, or "
        "leave the group out here"
    )


@dataclass(frozen=True)
class DeadMember:
    """A group member whose process died holding the group's lock (``kill -9``): the broker
    keeps it in the group until its session times out."""

    group: str
    member_id: str
    kafka: str  # the bootstrap it joined through: its member id means nothing to another broker
    pid: object


def _write(handle: IO[str], record: Mapping[str, object]) -> None:
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps(record))
    handle.flush()


def _dead_member(record: Mapping[str, object]) -> DeadMember | None:
    """The member a holder recorded, when the record names one (its lock is free: it died)."""
    group, member, kafka = record.get("group"), record.get("member_id"), record.get("kafka")
    if isinstance(group, str) and isinstance(member, str) and member and isinstance(kafka, str):
        return DeadMember(group, member, kafka, record.get("pid"))
    return None


class GroupHold:
    """The groups a process holds (``hold_groups``): their lock files, and the members that
    earlier holders left behind when they died."""

    def __init__(
        self,
        handles: Mapping[str, IO[str]],
        records: Mapping[str, dict[str, object]],
        dead_members: Sequence[DeadMember] = (),
    ) -> None:
        self._handles = handles
        self._records = records
        self.dead_members = list(dead_members)

    def record_members(self, members: Mapping[str, str], kafka: Sequence[str]) -> None:
        """Write each joined group's member id (and the broker's address) into its lock file,
        for the process that takes the group over if this one dies."""
        for group, member_id in members.items():
            handle = self._handles.get(group)
            if handle is None or not member_id:
                continue
            self._records[group].update(member_id=member_id, kafka=",".join(kafka))
            _write(handle, self._records[group])

    async def leave_dead_members(self, kafka: Sequence[str]) -> list[DeadMember]:
        """Send LeaveGroup for each dead member that joined through ``kafka`` (the embedded
        broker's address changes with every ``up``, and with it every member id); the ones
        the broker removed. Bounded and best effort: on any failure the dead member expires
        with its session, as it would have anyway."""
        here = ",".join(kafka)
        dead = [m for m in self.dead_members if m.kafka == here]
        if not dead:
            return []
        try:
            async with asyncio.timeout(LEAVE_TIMEOUT_SECONDS):
                left = await send_leave_group(kafka, dead)
        except TimeoutError:
            log.warning("LeaveGroup for the dead members got no answer: joining as before")
            return []
        for member in left:
            log.info(
                "group %s: removed member %s of dead process %s before joining",
                short_name(member.group),
                member.member_id,
                member.pid,
            )
        return left


async def send_leave_group(kafka: Sequence[str], members: Sequence[DeadMember]) -> list[DeadMember]:
    """LeaveGroup for each of ``members``, sent to its group's coordinator; those the broker
    accepted (an unknown member id, e.g. one whose session already expired, is skipped)."""
    # Deferred: aiokafka costs ~80 ms of start-up to every streamrec command (this module is
    # imported when the CLI registers `up`), and only a consumer taking a group over needs it.
    from aiokafka.client import AIOKafkaClient, ConnectionGroup, CoordinationType
    from aiokafka.errors import KafkaError, for_code
    from aiokafka.protocol.group import LeaveGroupRequest

    client = AIOKafkaClient(bootstrap_servers=list(kafka), client_id="streamrec-membership")
    left: list[DeadMember] = []
    try:
        await client.bootstrap()
        for member in members:
            try:
                node = await client.coordinator_lookup(CoordinationType.GROUP, member.group)
                response = await client.send(
                    node,
                    LeaveGroupRequest(member.group, member.member_id),
                    group=ConnectionGroup.COORDINATION,
                )
            except KafkaError as exc:
                log.warning("LeaveGroup for %s failed: %s", member.member_id, exc)
                continue
            if response.error_code != 0:
                error = for_code(response.error_code).__name__
                log.info("LeaveGroup for %s: %s", member.member_id, error)
                continue
            left.append(member)
    finally:
        await client.close()
    return left


def joined_members(broker: KafkaBroker) -> dict[str, str]:
    """Group → aiokafka member id of each started subscriber of ``broker``. aiokafka has no
    public accessor: the id lives on the consumer's group coordinator."""
    found: dict[str, str] = {}
    for subscriber in broker.subscribers:
        consumer = getattr(subscriber, "consumer", None)
        coordinator = getattr(consumer, "_coordinator", None)
        member_id = getattr(coordinator, "member_id", "")
        group = getattr(subscriber, "group_id", None)
        if isinstance(group, str) and isinstance(member_id, str) and member_id:
            found[group] = member_id
    return found


async def start_as_holder(
    broker: KafkaBroker, hold: GroupHold | None, kafka: Sequence[str]
) -> list[DeadMember]:
    """Start ``broker`` (connected to ``kafka``); when this process holds its groups (``hold``),
    first remove the members that dead holders left, then record the new member ids. Returns
    the dead members the broker removed.

    The leave goes right before the subscribers join: a leave opens a rebalance on the embedded
    broker that waits (session timeout - 1 s) for members, and a join that comes after it
    closed finds the group empty and waits the broker's initial rebalance delay (3 s) on top.
    """
    if hold is None:
        await broker.start()
        return []
    # Deferred: consumers.app costs ~1 s of imports (FastStream, the stores), and this module is
    # imported by every streamrec command; wherever a broker starts, it is loaded already.
    from streamrec.consumers.app import ConsumerBroker

    left: list[DeadMember] = []

    async def leave() -> None:
        left.extend(await hold.leave_dead_members(kafka))

    if isinstance(broker, ConsumerBroker):
        broker.before_start.append(leave)  # after its own hooks (the features log check)
    else:
        await leave()
    await broker.start()
    hold.record_members(joined_members(broker), kafka)
    return left


@contextlib.contextmanager
def hold_groups(
    var_dir: Path, groups: Sequence[ConsumerGroup], command: str
) -> Iterator[GroupHold]:
    """Hold every group in ``groups`` for this process, or raise ``GroupInUse`` (taking none)."""
    (var_dir / LOCK_DIR).mkdir(parents=True, exist_ok=True)
    held: dict[str, IO[str]] = {}
    records: dict[str, dict[str, object]] = {}
    dead: list[DeadMember] = []
    taken: list[tuple[ConsumerGroup, dict[str, object]]] = []
    try:
        for group in groups:
            path = _lock_path(var_dir, group)
            handle: IO[str] = path.open("a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                taken.append((group, _holder(path)))
                continue
            held[str(group)] = handle
            # The lock was free, so whoever wrote this record is gone without emptying it.
            left_behind = _dead_member(_holder(path))
            if left_behind is not None:
                dead.append(left_behind)
            records[str(group)] = {"pid": os.getpid(), "command": command, "group": str(group)}
            _write(handle, records[str(group)])
        if taken:
            raise GroupInUse(_refusal(var_dir, taken))
        yield GroupHold(held, records, dead)
    finally:
        for handle in held.values():
            # Emptied first, so a reader never names a process that has let go.
            handle.seek(0)
            handle.truncate()
            handle.flush()
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()


def parse_group_list(text: str, available: Sequence[ConsumerGroup]) -> list[ConsumerGroup]:
    """``features,archive`` → those groups; ``all`` → every available one; ``none`` → []."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if names == ["all"]:
        return list(available)
    if names == ["none"]:
        return []
    by_name = {short_name(g): g for g in available}
    unknown = [n for n in names if n not in by_name]
    if unknown or not names:
        choices = ", ".join(by_name)
        raise ValueError(
            f"unknown consumer group {', '.join(unknown) or repr(text)}: give a comma-separated "
            f"list of {choices}, or all, or none"
        )
    return [by_name[n] for n in dict.fromkeys(names)]
