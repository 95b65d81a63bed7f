"""``streamrec consume`` beside a running ``streamrec up`` on the embedded broker."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from consumers.app import DEFAULT_GROUPS
from consumers.membership import GroupInUse, hold_groups, parse_group_list
from schemas.topics import ConsumerGroup


async def test_a_group_that_up_runs_is_refused_in_one_line(app_client, settings) -> None:  # type: ignore[no-untyped-def]
    # app_client runs the API with every consumer group in-process, as `streamrec up` does;
    # `streamrec consume` is another process, as beside a real `up`.
    env = {
        **os.environ,
        "STREAMREC_VAR_DIR": str(settings.var_dir),
        "STREAMREC_KAFKA_BOOTSTRAP": "embedded",
        "STREAMREC_REDIS_URL": "embedded",
    }
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("streamrec")),
        *("consume", "-g", "features", "-g", "archive"),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    raw, _ = await asyncio.wait_for(process.communicate(), timeout=120)
    output = raw.decode()
    assert process.returncode == 2, output
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert "Traceback" not in output
    assert "the features and archive groups are already consumed by streamrec up (pid " in lines[0]
    assert "start up with --groups vectors,online-rl to leave them to this process" in lines[0]


def test_a_group_up_leaves_out_can_be_taken_and_only_once(settings) -> None:  # type: ignore[no-untyped-def]
    up_groups = parse_group_list("archive,vectors,online-rl", DEFAULT_GROUPS)
    features = [ConsumerGroup.FEATURES]
    with hold_groups(settings.var_dir, up_groups, "streamrec up"):
        with hold_groups(settings.var_dir, features, "streamrec consume"):  # noqa: SIM117
            with pytest.raises(GroupInUse, match="consumed by streamrec consume"):
                with hold_groups(settings.var_dir, features, "streamrec consume"):
                    pass
        # Released when its holder stops: the next process gets it.
        with hold_groups(settings.var_dir, features, "streamrec consume"):
            pass


def test_up_groups_option_parses_names() -> None:
    assert parse_group_list("all", DEFAULT_GROUPS) == list(DEFAULT_GROUPS)
    assert parse_group_list("none", DEFAULT_GROUPS) == []
    assert parse_group_list("online-rl, features", DEFAULT_GROUPS) == [
        ConsumerGroup.ONLINE_RL,
        ConsumerGroup.FEATURES,
    ]
    with pytest.raises(ValueError, match="unknown consumer group retrain"):
        parse_group_list("features,retrain", DEFAULT_GROUPS)
