"""``streamrec serve`` and ``streamrec up`` stop within 10 s of SIGTERM/SIGINT with Kafka and
Redis down (issue 11, item 5: ``up`` ignored SIGINT for 40 s with Kafka down). Real
processes, against a mock Kafka cluster and a redis-server this test owns and takes down."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from streamrec.core.embedded import EmbeddedKafka
from streamrec.schemas.topics import Topic
from tests.api.test_errors import RATING
from tests.conftest import ADMIN_KEY, INGEST_KEY
from tests.outages import PrivateRedis

pytestmark = pytest.mark.kafka

STREAMREC = Path(sys.executable).with_name("streamrec")
# A hang guard, not a speed limit (how fast it stops is for benchmarks): the process must end
# by itself, without the SIGKILL this guard sends.
HANG_GUARD_SECONDS = 60
HEADERS = {"X-API-Key": INGEST_KEY}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def kafka() -> Iterator[EmbeddedKafka]:
    cluster = EmbeddedKafka(2)
    cluster.ensure_topics([str(t) for t in Topic])
    yield cluster
    cluster.close()


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path / "redis")
    yield server
    server.close()


def stderr_file(cwd: Path, command: str) -> Path:
    return cwd / f"{command}.stderr"


def start(command: str, env: dict[str, str], cwd: Path, port: int) -> subprocess.Popen:
    # Its logs go to stderr: into a file, as a pipe nobody reads until the end fills up with
    # the errors logged while Kafka is down, and the process then blocks writing to it.
    with stderr_file(cwd, command).open("wb") as stderr:
        process = subprocess.Popen(
            [str(STREAMREC), command, "--port", str(port)],
            env=env,
            cwd=cwd,  # no .env of the developer's is read
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    deadline = time.monotonic() + 90  # `up` joins four consumer groups first
    while time.monotonic() < deadline:
        if process.poll() is not None:
            logged = stderr_file(cwd, command).read_text()
            raise AssertionError(f"{command} exited: {logged[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            pass  # not listening yet
        time.sleep(0.2)
    process.kill()
    raise AssertionError(f"{command} did not start within 90 s")


def stops_by_itself(process: subprocess.Popen, signum: int) -> bool:
    """Send ``signum``; True if the process then ends on its own (False: it had to be killed)."""
    process.send_signal(signum)
    try:
        process.wait(timeout=HANG_GUARD_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return False
    return True


@pytest.mark.parametrize(("command", "signum"), [("serve", signal.SIGTERM), ("up", signal.SIGINT)])
def test_stops_with_kafka_and_redis_down(
    command: str,
    signum: int,
    kafka: EmbeddedKafka,
    redis: PrivateRedis,
    database_url: str,
    tmp_path: Path,
) -> None:
    env = {
        **os.environ,
        "STREAMREC_KAFKA_BOOTSTRAP": kafka.bootstrap,
        "STREAMREC_REDIS_URL": redis.url,
        "STREAMREC_DATABASE_URL": database_url,
        "STREAMREC_QDRANT_URL": "embedded",
        "STREAMREC_VAR_DIR": str(tmp_path / "var"),
        "STREAMREC_INGEST_API_KEY": INGEST_KEY,
        "STREAMREC_ADMIN_API_KEY": ADMIN_KEY,
        # Every log record one JSON line: a line that is not one was printed by no logger
        # (an unhandled exception's traceback).
        "STREAMREC_LOG_FORMAT": "json",
    }
    port = free_port()
    process = start(command, env, tmp_path, port)
    events = f"http://127.0.0.1:{port}/v1/events"
    batch = [RATING] * 50
    assert httpx.post(events, json=batch, headers=HEADERS, timeout=30).status_code == 202
    kafka.close()
    redis.pause()
    # A publish in flight when the signal comes (the original hung for minutes here).
    answers: list[int] = []
    inflight = threading.Thread(
        target=lambda: answers.append(
            httpx.post(events, json=batch, headers=HEADERS, timeout=60).status_code
        )
    )
    inflight.start()
    time.sleep(0.5)  # let the request reach the publisher
    stopped = stops_by_itself(process, signum)
    inflight.join(timeout=60)
    stderr = stderr_file(tmp_path, command).read_text()
    assert stopped, f"{command} did not stop on its signal\n{stderr[-3000:]}"
    assert answers == [503], stderr[-3000:]  # answered within the grace, not cut off
    unlogged = [line for line in stderr.splitlines() if not _is_log_record(line)]
    assert not unlogged, "\n".join(unlogged)[-3000:]
    # Nor an error that escaped a request or the lifespan (uvicorn logs those with a trace).
    records = [json.loads(line) for line in stderr.splitlines()]
    escaped = [r for r in records if r["logger"].startswith("uvicorn") and "exception" in r]
    assert not escaped, escaped


def _is_log_record(line: str) -> bool:
    try:
        return "level" in json.loads(line)
    except ValueError:
        return False


# -- a start-up that fails says so in one line (issue 15, item 4) -------------------------------
def _failed_start(command: str, env: dict[str, str], cwd: Path) -> tuple[int, str]:
    """Run ``command`` until it exits by itself (it must: nothing can start); its exit status
    and what it wrote to stderr."""
    done = subprocess.run(
        [str(STREAMREC), command, "--port", str(free_port())],
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,  # a hang is a failure too, not a stuck suite
    )
    assert "Traceback" not in done.stderr + done.stdout, done.stderr[-3000:]
    return done.returncode, done.stderr


def _env(tmp_path: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    return {
        **env,
        "STREAMREC_QDRANT_URL": "embedded",
        "STREAMREC_VAR_DIR": str(tmp_path / "var"),
        "STREAMREC_INGEST_API_KEY": INGEST_KEY,
        "STREAMREC_ADMIN_API_KEY": ADMIN_KEY,
        **{f"STREAMREC_{name.upper()}": value for name, value in settings.items()},
    }


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_serve_with_redis_down_exits_with_one_line_naming_it(
    log_format: str, tmp_path: Path
) -> None:
    redis = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    env = _env(
        tmp_path,
        kafka_bootstrap=f"127.0.0.1:{free_port()}",
        redis_url=redis,
        database_url=f"sqlite:///{tmp_path}/db.sqlite",
        log_format=log_format,
    )
    status, stderr = _failed_start("serve", env, tmp_path)
    assert status == 1
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr  # the 108-line traceback of the issue, as one line
    message = json.loads(lines[0])["message"] if log_format == "json" else lines[0]
    assert "streamrec serve did not start: Redis at " + redis in message, message
    assert "set STREAMREC_REDIS_URL" in message, message


def test_serve_with_postgresql_unreachable_names_it_without_its_password(
    kafka: EmbeddedKafka, redis: PrivateRedis, tmp_path: Path
) -> None:
    port = free_port()  # nothing listens there
    env = _env(
        tmp_path,
        kafka_bootstrap=kafka.bootstrap,
        redis_url=redis.url,
        database_url=f"postgresql://streamrec:s3cret@127.0.0.1:{port}/streamrec",
    )
    status, stderr = _failed_start("serve", env, tmp_path)
    assert status == 1
    assert len(stderr.splitlines()) == 1, stderr
    assert f"The SQL database at postgresql://streamrec:***@127.0.0.1:{port}/streamrec " in stderr
    assert "set STREAMREC_DATABASE_URL" in stderr and "s3cret" not in stderr


def test_up_with_redis_down_exits_with_one_error_line_naming_it(tmp_path: Path) -> None:
    redis = f"redis://127.0.0.1:{free_port()}/0"
    env = _env(tmp_path, kafka_bootstrap="embedded", redis_url=redis)
    status, stderr = _failed_start("up", env, tmp_path)
    assert status == 1
    errors = [line for line in stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, stderr  # beside INFO lines of what did start (embedded Kafka)
    assert f"streamrec up did not start: Redis at {redis} " in errors[0], stderr
    assert "set STREAMREC_REDIS_URL" in errors[0]
