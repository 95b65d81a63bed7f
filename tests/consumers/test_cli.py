"""``streamrec consume`` beside a running ``streamrec up`` on the embedded broker."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from streamrec.apps.up import embedded_app
from streamrec.consumers.app import DEFAULT_GROUPS
from streamrec.consumers.cli import lag_table
from streamrec.consumers.membership import GroupInUse, hold_groups, parse_group_list
from streamrec.schemas.api import GroupLag, LagReport, LagStatus, PartitionLag
from streamrec.schemas.topics import GROUP_TOPICS, ConsumerGroup
from tests.conftest import INGEST_KEY, wait_until


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
    assert (
        "start up with --groups vectors,online-rl,retrain to leave them to this process" in lines[0]
    )


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
    assert parse_group_list("retrain", DEFAULT_GROUPS) == [ConsumerGroup.RETRAIN]
    with pytest.raises(ValueError, match="unknown consumer group training"):
        parse_group_list("features,training", DEFAULT_GROUPS)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _samples(text: str, group: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.labels.get("group") == group
    }


async def test_consume_serves_its_groups_counters_and_lag_on_its_metrics_port(settings) -> None:  # type: ignore[no-untyped-def]
    """`streamrec consume -g archive` beside an `up` that leaves archive out: its own /metrics
    has the archive group's counters, lag and status."""
    archive = ConsumerGroup.ARCHIVE
    app = embedded_app(settings, [g for g in DEFAULT_GROUPS if g is not archive])
    port = _free_port()
    env = {
        **os.environ,
        "STREAMREC_VAR_DIR": str(settings.var_dir),
        "STREAMREC_KAFKA_BOOTSTRAP": "embedded",
        "STREAMREC_REDIS_URL": "embedded",
        "STREAMREC_DATABASE_URL": settings.database_url,
        "STREAMREC_METRICS_PORT": str(port),
        # Another process: its lag reader cannot take this test's clock, so it reads often.
        "STREAMREC_LAG_REFRESH_SECONDS": "0.2",
    }
    async with app.router.lifespan_context(app):
        process = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).with_name("streamrec")),
            *("consume", "-g", "archive"),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            events = [{"type": "item", "item_id": "i1", "title": "One"}] + [
                {"type": "rating", "user_id": f"u{n}", "item_id": "i1", "rating": 4}
                for n in range(3)
            ]
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://up") as client:
                response = await client.post(
                    "/v1/events", json=events, headers={"X-API-Key": INGEST_KEY}
                )
                assert response.status_code == 202
            found: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}

            async def applied_and_caught_up() -> bool:
                nonlocal found
                try:
                    async with httpx.AsyncClient() as http:
                        text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
                except httpx.TransportError:
                    return False  # not serving yet
                found = _samples(text, archive.value)
                consumed = ("streamrec_events_consumed_total", {"topic": "streamrec.ratings"})
                status_ok = ("streamrec_consumer_group_status", {"status": "OK"})
                return all(
                    found.get((name, frozenset({"group": archive.value, **labels}.items()))) == want
                    for (name, labels), want in ((consumed, 3.0), (status_ok, 1.0))
                )

            await wait_until(applied_and_caught_up, timeout=90)
        finally:
            process.terminate()
            output, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    lags = {labels: v for (name, labels), v in found.items() if name.endswith("lag_messages")}
    assert lags and set(lags.values()) == {0.0}, output.decode()
    # Its own groups only: the other groups' lag is the API's to export.
    assert {dict(labels)["topic"] for labels in lags} == {t.value for t in GROUP_TOPICS[archive]}
    assert process.returncode == 0, output.decode()


def test_the_lag_table_has_a_row_per_group_and_a_coloured_status() -> None:
    report = LagReport(
        groups=[
            GroupLag(
                group="streamrec-features",
                partitions=[
                    PartitionLag(
                        topic="streamrec.ratings",
                        partition=0,
                        end_offset=10,
                        committed_offset=4,
                        lag=6,
                        lag_seconds=12.5,
                        status=LagStatus.STALL,
                    ),
                    PartitionLag(
                        topic="streamrec.ratings",
                        partition=1,
                        end_offset=3,
                        committed_offset=3,
                        lag=0,
                        lag_seconds=0.0,
                        status=LagStatus.OK,
                    ),
                ],
                total_lag=6,
                max_lag_seconds=12.5,
                status=LagStatus.STALL,
            )
        ],
        total_lag=6,
        measured_at=1_000.0,
    )
    console = Console(record=True, width=120, force_terminal=True)
    console.print(lag_table(report))
    text = console.export_text(clear=False)
    rows = [line for line in text.splitlines() if "STALL" in line or " OK" in line]
    assert len(rows) == 3  # the group, then its two partitions
    assert "features" in rows[0] and "12.5" in rows[0]
    assert "ratings" in rows[1] and "STALL" in rows[1] and "ratings" in rows[2]
    styled = console.export_text(styles=True)
    assert "\x1b[31mSTALL" in styled and "\x1b[32mOK" in styled  # red, green
