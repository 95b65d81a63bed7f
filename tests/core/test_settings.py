"""Settings: embedded by default, keys generated when embedded, refused otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from streamrec.core.errors import ConfigurationError
from streamrec.core.settings import Settings


def test_defaults_are_embedded_with_sqlite_under_var(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, var_dir=tmp_path)
    assert settings.fully_embedded
    assert settings.database_url == f"sqlite:///{tmp_path.as_posix()}/streamrec.db"


def test_embedded_generates_missing_keys(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, var_dir=tmp_path)
    settings.require_api_keys()
    ingest, admin = settings.ingest_api_key, settings.admin_api_key
    assert ingest is not None and admin is not None
    assert len(ingest.get_secret_value()) >= 24 and ingest != admin
    assert settings.generated_keys == {
        "ingest_api_key": ingest.get_secret_value(),
        "admin_api_key": admin.get_secret_value(),
    }


def test_real_services_refuse_to_start_without_keys(tmp_path: Path) -> None:
    settings = Settings(
        _env_file=None, var_dir=tmp_path, kafka_bootstrap="kafka:9092", admin_api_key=SecretStr("a")
    )
    with pytest.raises(ConfigurationError, match="STREAMREC_INGEST_API_KEY must be set"):
        settings.require_api_keys()


def test_blank_keys_count_as_unset(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STREAMREC_INGEST_API_KEY", "  ")
    monkeypatch.setenv("STREAMREC_REDIS_URL", "redis://redis:6379/0")
    settings = Settings(_env_file=None, var_dir=tmp_path, admin_api_key=SecretStr("a"))
    assert settings.ingest_api_key is None
    with pytest.raises(ConfigurationError):
        settings.require_api_keys()


def test_environment_overrides_and_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMREC_CONSUMER_BATCH_SIZE", "500")
    assert Settings(_env_file=None).consumer_batch_size == 500
    monkeypatch.setenv("STREAMREC_CONSUMER_BATCH_SIZE", "0")
    with pytest.raises(ValidationError, match="consumer_batch_size"):
        Settings(_env_file=None)
