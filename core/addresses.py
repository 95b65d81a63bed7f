"""Where a running ``streamrec up`` listens, and the Kafka servers a client-only process uses.

Light on purpose (no client library imported): every ``streamrec`` command that only needs an
address (replay, lag, dlq, rebuild) reads it from here, so its start-up stays short.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from streamrec.core.errors import ConfigurationError, ServiceUnavailable
from streamrec.core.settings import Settings

ADDRESS_FILE = "embedded.json"


@dataclass
class EmbeddedAddresses:
    """Where the running embedded services listen, so other processes (``streamrec replay``,
    ``streamrec lag``) can reach the broker and Redis of a running ``streamrec up``."""

    kafka_bootstrap: str
    redis_url: str
    pid: int
    kafka_log_id: str = ""  # the embedded log's id (EmbeddedKafka.log_id); "" in older files

    def write(self, var_dir: Path) -> Path:
        var_dir.mkdir(parents=True, exist_ok=True)
        path = var_dir / ADDRESS_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self)))
        tmp.replace(path)
        return path

    @classmethod
    def read(cls, var_dir: Path) -> EmbeddedAddresses | None:
        path = var_dir / ADDRESS_FILE
        if not path.is_file():
            return None
        found = cls(**json.loads(path.read_text()))
        return found if _process_alive(found.pid) else None

    @contextlib.contextmanager
    def announced(self, var_dir: Path) -> Iterator[None]:
        """Written to ``var_dir`` for as long as the block runs (other processes attach)."""
        self.write(var_dir)
        try:
            yield
        finally:
            self.remove(var_dir)

    @staticmethod
    def remove(var_dir: Path) -> None:
        (var_dir / ADDRESS_FILE).unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def bootstrap_list(value: str) -> list[str]:
    servers = [s.strip() for s in value.split(",") if s.strip()]
    if not servers:
        raise ConfigurationError("STREAMREC_KAFKA_BOOTSTRAP is empty: give host:port[,host:port]")
    return servers


def attached_addresses(settings: Settings) -> EmbeddedAddresses:
    found = EmbeddedAddresses.read(settings.var_dir)
    if found is None:
        raise ServiceUnavailable(
            "no embedded streamrec is running (no live "
            f"{settings.var_dir}/embedded.json): start `streamrec up` first, or point "
            "STREAMREC_KAFKA_BOOTSTRAP / STREAMREC_REDIS_URL at real services"
        )
    return found


def kafka_bootstrap_for(settings: Settings) -> list[str]:
    """Kafka servers for a client-only process (replay, lag): the configured ones, or those of
    the running ``streamrec up`` when Kafka is embedded."""
    if settings.embedded_kafka:
        return [attached_addresses(settings).kafka_bootstrap]
    return bootstrap_list(settings.kafka_bootstrap)
