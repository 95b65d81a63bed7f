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
from typing import ClassVar, Self

from pydantic import SecretStr

from streamrec.core.errors import ConfigurationError, ServiceUnavailable
from streamrec.core.settings import Settings

ADDRESS_FILE = "embedded.json"
VECTOR_HOST_FILE = "vector_host.json"


class _Announced:
    """A JSON file in the var dir that says where a running process serves, for as long as it
    runs: written atomically, owner-only (it may hold a token), ignored once ``pid`` is gone."""

    FILE: ClassVar[str]
    pid: int

    def write(self, var_dir: Path) -> Path:
        var_dir.mkdir(parents=True, exist_ok=True)
        path = var_dir / self.FILE
        tmp = path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
            out.write(json.dumps(asdict(self)))  # type: ignore[call-overload]
        tmp.replace(path)
        return path

    @classmethod
    def read(cls, var_dir: Path) -> Self | None:
        path = var_dir / cls.FILE
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

    @classmethod
    def remove(cls, var_dir: Path) -> None:
        (var_dir / cls.FILE).unlink(missing_ok=True)


@dataclass
class EmbeddedAddresses(_Announced):
    """Where the running embedded services listen, so other processes (``streamrec replay``,
    ``streamrec lag``) can reach the broker and Redis of a running ``streamrec up``."""

    FILE: ClassVar[str] = ADDRESS_FILE
    kafka_bootstrap: str
    redis_url: str
    pid: int
    kafka_log_id: str = ""  # the embedded log's id (EmbeddedKafka.log_id); "" in older files


@dataclass
class VectorHostAddress(_Announced):
    """Where the process of a running ``streamrec up`` that owns the Qdrant Edge shards
    serves them (``stores/vectors/host.py``), with the run's token: a command that writes
    vectors beside it (``streamrec vectors publish``) goes through it, since a shard may be
    open in one process only. ``pid``: the ``up`` supervisor's."""

    FILE: ClassVar[str] = VECTOR_HOST_FILE
    url: str
    token: str
    pid: int


def through_running_vector_host(settings: Settings) -> Settings:
    """``settings`` pointed at the vector host of a ``streamrec up`` running on the same var
    dir, when Qdrant is embedded and no host is set; otherwise ``settings`` unchanged."""
    if not settings.embedded_qdrant or settings.vector_host_url.strip():
        return settings
    found = VectorHostAddress.read(settings.var_dir)
    if found is None:
        return settings
    return settings.model_copy(
        update={"vector_host_url": found.url, "vector_host_token": SecretStr(found.token)}
    )


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
