"""One process per consumer group on the embedded broker, checked before anyone joins.

librdkafka's mock cluster cannot complete a rebalance with a second member (DESIGN §2): a second
``streamrec consume -g features`` beside the ``streamrec up`` that runs ``features`` died in
``SyncGroup: InvalidRequestError``. So on the embedded broker every process that consumes a
group first takes an exclusive ``flock`` on ``<var_dir>/groups/<group>.lock`` and writes its pid
and command into it; a second process finds the lock taken, reads who holds it and refuses at
once with one line. The kernel drops a lock when its process dies (``kill -9`` included), so a
lock is never stale. Real Kafka balances several members of a group: no locks there.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

from core.errors import StreamrecError
from schemas.topics import ConsumerGroup

LOCK_DIR = "groups"


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


@contextlib.contextmanager
def hold_groups(var_dir: Path, groups: Sequence[ConsumerGroup], command: str) -> Iterator[None]:
    """Hold every group in ``groups`` for this process, or raise ``GroupInUse`` (taking none)."""
    (var_dir / LOCK_DIR).mkdir(parents=True, exist_ok=True)
    held: list[IO[str]] = []
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
            held.append(handle)
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps({"pid": os.getpid(), "command": command, "group": group}))
            handle.flush()
        if taken:
            raise GroupInUse(_refusal(var_dir, taken))
        yield
    finally:
        for handle in held:
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
