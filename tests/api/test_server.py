"""What a start-up that fails says (``api.server``): one line naming the service, its address
and the setting, for ``serve`` (also before it starts worker processes) and ``up``. The
commands themselves are run in tests/api/test_cli.py."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from aiokafka.errors import KafkaConnectionError

from streamrec.api.server import StartupFailed, check_services, describe_startup_error
from streamrec.core.errors import ConfigurationError, ServiceUnavailable
from streamrec.core.settings import Settings


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # closed again: nothing listens there


def _settings(tmp_path: Path, **values: str) -> Settings:
    return Settings(_env_file=None, var_dir=tmp_path, **values)


def test_the_check_before_workers_start_names_a_redis_that_is_down(tmp_path: Path) -> None:
    redis = f"redis://:hunter2@127.0.0.1:{_closed_port()}/0"
    settings = _settings(tmp_path, kafka_bootstrap=f"127.0.0.1:{_closed_port()}", redis_url=redis)
    with pytest.raises(StartupFailed) as failed:
        check_services(settings)
    line = str(failed.value)
    assert line.startswith(f"Redis at redis://:***@127.0.0.1:{redis.split(':')[-1]} "), line
    assert "set STREAMREC_REDIS_URL" in line and "hunter2" not in line
    assert "\n" not in line


def test_kafka_is_named_with_its_bootstrap_servers(tmp_path: Path) -> None:
    settings = _settings(tmp_path, kafka_bootstrap="k1:9092,k2:9092")
    try:
        try:
            raise KafkaConnectionError("Unable to bootstrap from [('k1', 9092)]")
        except KafkaConnectionError as exc:
            raise ServiceUnavailable("Kafka did not answer") from exc
    except ServiceUnavailable as exc:
        line = describe_startup_error(exc, settings)
    assert line is not None and line.startswith("Kafka at k1:9092,k2:9092 did not answer ("), line
    assert line.endswith("set STREAMREC_KAFKA_BOOTSTRAP to one that runs")


def test_a_domain_error_is_its_message_and_a_bug_keeps_its_traceback(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    missing = ConfigurationError("STREAMREC_ADMIN_API_KEY must be set\n(generate one with ...)")
    assert describe_startup_error(missing, settings) == (
        "STREAMREC_ADMIN_API_KEY must be set (generate one with ...)"
    )
    assert describe_startup_error(RuntimeError("a bug"), settings) is None
