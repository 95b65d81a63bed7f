"""A consumer process killed with SIGKILL leaves its member in the group until the session
expires, and the next process's join waits for it (issue 11, item 8). The holder of a group
records its member id in the group's lock file; the process that takes the lock over from a
dead holder sends LeaveGroup for that id before it joins. (How much sooner it resumes is
measured by ``benchmarks/consumer_resume.py``, not asserted here.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from streamrec.consumers.app import build_consumer_broker
from streamrec.consumers.membership import (
    DeadMember,
    GroupHold,
    hold_groups,
    joined_members,
    start_as_holder,
)
from streamrec.core.metrics import Metrics
from streamrec.core.settings import Settings
from streamrec.schemas.topics import ConsumerGroup
from streamrec.stores.factory import Stores

ROOT = Path(__file__).resolve().parents[2]
GROUP = ConsumerGroup.ARCHIVE

# A holder that records a member id (a made-up one, or its real one after joining the
# broker), says so, and waits to be killed.
_HOLDER = """
import asyncio, sys
from pathlib import Path
from streamrec.consumers.membership import hold_groups
from streamrec.schemas.topics import ConsumerGroup

var_dir, kafka = Path(sys.argv[1]), sys.argv[2]
with hold_groups(var_dir, [ConsumerGroup.ARCHIVE], "streamrec consume") as hold:
    hold.record_members({ConsumerGroup.ARCHIVE: "member-of-the-dead"}, [kafka])
    print("holding", flush=True)
    asyncio.run(asyncio.sleep(600))
"""
_MEMBER = """
import asyncio, sys
from pathlib import Path
from faststream.kafka import KafkaBroker
from streamrec.consumers.membership import hold_groups, joined_members, start_as_holder
from streamrec.consumers.policy import batch_subscriber_options, event_topics
from streamrec.core.settings import Settings
from streamrec.schemas.topics import ConsumerGroup

async def main(var_dir: Path, kafka: str) -> None:
    settings = Settings(_env_file=None, kafka_bootstrap="embedded")
    group = ConsumerGroup.ARCHIVE
    broker = KafkaBroker([kafka])

    @broker.subscriber(*event_topics(settings, group), **batch_subscriber_options(settings, group))
    async def handle(body: list[bytes | None]) -> None:
        pass

    with hold_groups(var_dir, [group], "streamrec consume") as hold:
        await start_as_holder(broker, hold, [kafka])
        print("holding", joined_members(broker)[group], flush=True)
        await asyncio.sleep(600)

asyncio.run(main(Path(sys.argv[1]), sys.argv[2]))
"""


@contextmanager
def killed_holder(script: str, var_dir: Path, kafka: str) -> Iterator[tuple[int, str]]:
    """Run ``script`` as a process that holds the group, SIGKILL it once it says it holds it;
    yields its pid and what it said."""
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(var_dir), kafka],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert child.stdout is not None
        # FastStream logs to stdout too; the loop ends at EOF if the child dies first.
        said = next((line for line in child.stdout if line.startswith("holding")), "")
        assert said, "the holder exited before it held the group"
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        yield child.pid, said
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()


def test_a_killed_holder_leaves_its_member_to_the_next_holder(tmp_path: Path) -> None:
    lock = tmp_path / "groups" / "archive.lock"
    with (
        killed_holder(_HOLDER, tmp_path, "127.0.0.1:9") as (pid, _),
        hold_groups(tmp_path, [GROUP], "streamrec consume") as hold,
    ):
        assert hold.dead_members == [
            DeadMember(str(GROUP), "member-of-the-dead", "127.0.0.1:9", pid)
        ]
        # The lock file now names this process, and no member until it has joined.
        record = json.loads(lock.read_text())
        assert record == {"pid": os.getpid(), "command": "streamrec consume", "group": GROUP}
        hold.record_members({str(GROUP): "mine"}, ["127.0.0.1:9"])
        record = json.loads(lock.read_text())
        assert (record["member_id"], record["kafka"]) == ("mine", "127.0.0.1:9")
    # A holder that let go cleanly leaves nothing to remove.
    with hold_groups(tmp_path, [GROUP], "streamrec consume") as hold:
        assert hold.dead_members == []


async def test_a_member_of_another_broker_is_not_sent_anywhere() -> None:
    # The embedded broker's address changes with every `up`, and its member ids with it.
    dead = DeadMember(str(GROUP), "member-of-the-dead", "127.0.0.1:9", 1)
    hold = GroupHold({}, {}, [dead])
    assert await hold.leave_dead_members(["127.0.0.1:10"]) == []


@pytest.mark.kafka
async def test_the_next_holder_removes_the_killed_member_before_joining(
    settings: Settings, stores: Stores
) -> None:
    kafka = stores.services.kafka_bootstrap
    with killed_holder(_MEMBER, settings.var_dir, ",".join(kafka)) as (pid, said):
        dead_id = said.split()[1]
        with hold_groups(settings.var_dir, [GROUP], "streamrec consume") as hold:
            assert [(m.member_id, m.pid) for m in hold.dead_members] == [(dead_id, pid)]
            broker = build_consumer_broker(stores, Metrics(), [GROUP])
            try:
                left = await start_as_holder(broker, hold, kafka)
                # The broker still had the killed member (its session had not expired) and
                # took the leave: this join did not wait for it.
                assert [m.member_id for m in left] == [dead_id]
                mine = joined_members(broker)[str(GROUP)]
                record = json.loads((settings.var_dir / "groups" / "archive.lock").read_text())
                # (Not `!= dead_id`: the mock cluster names members after a memory address,
                # which the killed member's freed slot may give again.)
                assert record["member_id"] == mine
                assert record["kafka"] == ",".join(kafka)
                if mine != dead_id:  # (else the id is ours now: a leave would remove us)
                    # Sent again, the leave finds no such member any more.
                    assert await hold.leave_dead_members(kafka) == []
            finally:
                await broker.stop()
