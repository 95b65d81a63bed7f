"""Request and response models of the HTTP API."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FiniteFloat,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    StrictBool,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema

from streamrec.schemas.events import ExplorationMethod
from streamrec.schemas.models import (
    MODELS,
    RECOMMENDERS,
    TRAINABLE,
    VECTOR_MODELS,
    ModelName,
    choices,
    resolve,
)
from streamrec.schemas.numbers import NotBool


class EventsAccepted(BaseModel):
    accepted: int = Field(description="Events written to Kafka")
    by_topic: dict[str, int] = Field(description="Accepted events per topic")


@dataclass(frozen=True)
class ModelNames:
    """Field metadata: a model name taking ``allowed`` (their names, and former names on
    input), derived from ``schemas.models``. A name it does not take is a 422 that says what
    to use instead; the schema lists the accepted names (output: the names alone)."""

    allowed: tuple[ModelName, ...]
    what: str  # the description
    where: str = "model="  # how the client names the field, in messages

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_before_validator_function(self._check, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        names = [n.value for n in self.allowed]
        if handler.mode == "validation":
            names += [alias for n in self.allowed for alias in MODELS[n].aliases]
        described = f"{self.what}: {choices(self.allowed)}"
        return {"type": "string", "enum": names, "description": described}

    def _check(self, value: Any) -> ModelName:
        try:
            if not isinstance(value, str):
                raise ValueError(
                    f"a model name (a string), not {value!r}: {self.where} takes "
                    f"{choices(self.allowed)}"
                )
            return resolve(value, self.allowed, self.where)
        except ValueError as error:
            raise PydanticCustomError("model_name", str(error)) from None


# Models that can serve recommendations (model=): popular, from the Redis counts, and every
# model with published vectors.
RecommendationModel = Annotated[
    ModelName, ModelNames(RECOMMENDERS, "A model that serves recommendations")
]
# Models with published item vectors (similar items): popular has none.
VectorModel = Annotated[ModelName, ModelNames(VECTOR_MODELS, "A model with item vectors")]


class RecommendedItem(BaseModel):
    item_id: str
    score: float
    title: str = ""
    genres: list[str] = Field(default_factory=list)
    q_value: float | None = Field(
        None, description="DQN Q-value with rerank=dqn; null otherwise or without a content vector"
    )


RerankPolicy = Literal["dqn"]  # policies that can re-order a base model's list


class RerankedBy(BaseModel):
    model: RerankPolicy = "dqn"
    version: int = Field(description="The dqn version whose Q-values ordered the list")
    exploration: ExplorationMethod = Field(
        "greedy", description="How the slate was drawn from the Q-values (STREAMREC_RL_*)"
    )


class FallbackReason(StrEnum):
    """Why popular items were served instead of the requested model."""

    NO_VERSION_PUBLISHED = "no_version_published"  # the model has no live (or pinned) vectors
    NO_HISTORY = "no_history"  # the user has no ratings or clicks yet
    NO_USER_VECTOR = "no_user_vector"  # history, but no vector in that version yet


class Recommendations(BaseModel):
    request_id: str
    user_id: str
    model: RecommendationModel = Field(description="The model that really served the list")
    version: int | None = Field(
        None, description="Model version (the live one, or the pinned one); null for popularity"
    )
    requested_model: RecommendationModel | None = Field(None, description="The model asked for")
    requested_version: int | None = Field(
        None, description="The version pinned with ?version=; null: the live version serves"
    )
    fallback: bool = Field(
        False,
        description="True when the requested model could not serve (no user vector or "
        "nothing published) and popular items were served instead",
    )
    fallback_reason: FallbackReason | None = Field(
        None,
        description="Why it fell back: no_version_published (the model has no live version, "
        "or the pinned one none, in Qdrant), no_history (the user has no ratings or clicks "
        "yet), no_user_vector (history, but no vector for that version yet); null when the "
        "requested model served",
    )
    variant: str = "default"
    known_user: bool = Field(description="Whether the user has any events yet")
    state_age_ms: int | None = Field(
        None,
        description="Age in ms of the user state used: the user vector for vector models "
        "(the feature state when that vector is a trained row, which no event changes), the "
        "feature state for popular",
    )
    reranked_by: RerankedBy | None = Field(
        None, description="Set when rerank=dqn re-ordered the base model's candidates"
    )
    rerank_fallback: bool = Field(
        False, description="True when rerank was asked but no policy could serve: base order"
    )
    rerank_note: str | None = Field(None, description="Why the re-ranking was skipped")
    items: list[RecommendedItem]


class SimilarItems(BaseModel):
    request_id: str
    item_id: str
    model: VectorModel
    version: int
    items: list[RecommendedItem]


class HistoryItem(BaseModel):
    item_id: str
    title: str = ""


class UserHistory(BaseModel):
    user_id: str
    items: list[HistoryItem] = Field(description="Most recent first")
    ratings: int = 0
    clicks: int = 0
    impressions: int = 0
    mean_rating: float | None = None
    genre_affinity: dict[str, float] = Field(default_factory=dict)


class ErrorBody(BaseModel):
    error: str = Field(description="A stable error code, e.g. invalid_input")
    message: str = Field(description="What went wrong and how to fix it")


class Health(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)


# -- the DQN edge (api/routers/rl.py) ---------------------------------------------------------
MAX_BATCH = 1000  # items, vectors or texts per request
MAX_TEXT_CHARS = 10_000
Vector = Annotated[list[Annotated[FiniteFloat, NotBool]], Field(min_length=1)]


class QValuesRequest(BaseModel):
    user_embedding: Vector = Field(description="The user state vector (the dqn state size)")
    item_embeddings: list[Vector] = Field(
        min_length=1,
        max_length=MAX_BATCH,
        description=f"1..{MAX_BATCH} item content vectors (the dqn item size)",
    )


class QValues(BaseModel):
    model: str = "dqn"
    version: int
    q_values: list[float] = Field(description="One per item embedding, in request order")


class RankRequest(BaseModel):
    user_id: str = Field(min_length=1, max_length=256)
    item_ids: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        min_length=1,
        max_length=MAX_BATCH,
        description=f"1..{MAX_BATCH} candidate item ids; duplicates are ranked once",
    )


class RankedItem(BaseModel):
    item_id: str
    q_value: float


class RankedItems(BaseModel):
    user_id: str
    model: str = "dqn"
    version: int = Field(description="The dqn version that scored the items")
    doc2vec_version: int = Field(description="The doc2vec version of the item vectors")
    items: list[RankedItem] = Field(description="Highest Q-value first")


Text = Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)]


class EmbedRequest(BaseModel):
    text: Text


class EmbedBulkRequest(BaseModel):
    texts: list[Text] = Field(min_length=1, max_length=MAX_BATCH)


class Embedding(BaseModel):
    model: str = "doc2vec"
    version: int
    vector: list[float]


class Embeddings(BaseModel):
    model: str = "doc2vec"
    version: int
    vectors: list[list[float]] = Field(description="One per text, in request order")


# -- model registry (api/routers/models.py) ---------------------------------------------------
MODEL_NAME_PATTERN = r"^[a-z0-9_]+$"  # the registry's rule (stores.model_registry.NAME_RE)
MAX_MODEL_NAME = 64


class VersionStatus(StrEnum):
    """Where a model version stands (``stores.model_registry``): at most one is live per name."""

    CANDIDATE = "candidate"  # registered, not serving, awaiting a decision
    LIVE = "live"  # the version serving (the registry's active pointer)
    REJECTED = "rejected"  # scored against the live version and refused (see its promotion)
    RETIRED = "retired"  # was live and was replaced; kept for rollback until retention


PromotionDecision = Literal["promote", "reject"]


class PromotionInfo(BaseModel):
    """How the version was judged against the live one on the same held-out events."""

    metric: str = Field(description="ndcg@10 (retrieval models) or auc (wide_deep)")
    candidate_score: float | None = Field(description="null when it was not a number")
    live_score: float | None = Field(description="null when no version was live")
    live_version: int | None
    tolerance: float = Field(
        description="Relative: promoted if >= live score x (1 - tolerance) - confidence x "
        "difference_se"
    )
    decision: PromotionDecision
    reason: str
    heldout_events: int = Field(description="Held-out interactions both versions were scored on")
    decided_at: datetime | None
    difference_se: float | None = Field(
        default=None,
        description="Standard error of the paired per-user difference (candidate - live) of "
        "the metric; null without pairs (no live version, auc)",
    )
    confidence: float = Field(
        default=0.0,
        description="Standard errors of that difference a candidate may fall short of "
        "live score x (1 - tolerance) by and still go live (0: the bare comparison)",
    )


class ModelVersionInfo(BaseModel):
    name: str
    version: int
    active: bool = Field(description="Whether it is the live version (status live)")
    status: VersionStatus
    activated_at: datetime | None = Field(description="When it last went live")
    created_at: datetime
    artifact_class: str = Field(description="The trainer class that loads the artifact")
    n_users: int = Field(description="Id-registry users when the version was trained")
    n_items: int = Field(description="Id-registry items when the version was trained")
    data_window: dict[str, Any] = Field(
        description="What it was trained on: source, counts, event-time span and, for the "
        "archive, the Kafka offsets covered per log, topic and partition (their ends are the "
        "archive watermark)"
    )
    metrics: dict[str, Any] = Field(description="Recorded metrics; per-epoch history left out")
    config: dict[str, Any] = Field(description="Scalar config values (sizes, loss, ...)")
    promotion: PromotionInfo | None = Field(description="null until it was scored for promotion")


class ModelInfo(BaseModel):
    name: str
    active_version: int | None = Field(description="null while no version is active")
    versions: list[ModelVersionInfo] = Field(description="Oldest first")


class ModelList(BaseModel):
    models: list[ModelInfo]


class DeletedVersion(BaseModel):
    name: str
    version: int
    deleted: bool = True


# -- training jobs (api/routers/training.py) --------------------------------------------------
# The models ``streamrec train`` and training jobs train: each one can then be served.
TrainableModel = Annotated[ModelName, ModelNames(TRAINABLE, "A model that trains", "model")]


TrainingData = Literal["synthetic", "archive"]  # never a filesystem path from a request
TrainingProtocol = Literal["loo-full", "loo-sampled", "random-split"]
JobStatus = Literal["queued", "running", "succeeded", "failed"]
JobStage = Literal["queued", "loading data", "training", "finished"]


class TrainingJobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: TrainableModel
    data: TrainingData = Field(
        description="archive (the SQL interactions archive: live) or synthetic (generated, "
        "seeded; trained offline, apart from the live registries)"
    )
    # NotBool after the bounds, so that the schema still states them (minimum, maximum).
    epochs: Annotated[int, Field(ge=1, le=100), NotBool] | None = Field(
        None, description="Most epochs; null: default"
    )
    batch_size: Annotated[int, Field(ge=16, le=65_536), NotBool] | None = None
    lr: Annotated[float, Field(gt=0.0, le=1.0), NotBool] | None = Field(
        None, description="Adam learning rate"
    )
    patience: Annotated[int, Field(ge=1, le=50), NotBool] | None = Field(
        None, description="Epochs without improvement"
    )
    seed: Annotated[int, NotBool] = Field(0, ge=0, le=2**31 - 1)
    protocol: TrainingProtocol = "loo-full"
    # Strict: lax booleans would take 0, 1, "yes" and "off", which the schema does not allow.
    exclude_seen: StrictBool = True
    activate: StrictBool = Field(True, description="Make the new version the active one")


class ModelVersionRef(BaseModel):
    name: str
    version: int
    active: bool


class TrainingJob(BaseModel):
    id: str
    status: JobStatus
    stage: JobStage = Field(description="Progress within the job")
    request: TrainingJobRequest
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    model_version: ModelVersionRef | None = Field(None, description="Set once it succeeded")
    test_metrics: dict[str, float] = Field(
        default_factory=dict, description="The new version's metrics on the held-out test part"
    )
    error: str | None = Field(None, description="Why the job failed")
    offline: bool = Field(
        False,
        description="Trained on data other than the archive (synthetic): in an offline run with "
        "its own id and model registry, never listed by /v1/models and never served",
    )


class TrainingJobList(BaseModel):
    jobs: list[TrainingJob] = Field(description="Newest first (this process's jobs)")
    max_queued: int = Field(description="Jobs that may wait behind the running one")


# -- experiments (api/routers/experiments.py) -------------------------------------------------
class ClickStats(BaseModel):
    impressions: int = Field(description="Recommendation lists served (impression events)")
    clicks: int = Field(description="Click events that named a model")
    ctr: float | None = Field(description="clicks / impressions; null without impressions")
    ctr_low: float | None = Field(description="95% Wilson interval, lower bound")
    ctr_high: float | None = Field(description="95% Wilson interval, upper bound")


class ModelClickStats(ClickStats):
    model: str


class VariantStats(ClickStats):
    variant: str = Field(description="The variant label as sent with the requests")
    models: list[ModelClickStats] = Field(description="The same counters per serving model")


class Experiment(ClickStats):
    name: str
    variants: list[VariantStats]


class ExperimentList(BaseModel):
    experiments: list[Experiment]


# -- the /ops page (api/routers/ops_page.py) --------------------------------------------------
class GroupThroughput(BaseModel):
    group: str
    events: int = Field(
        description="Events applied since start, summed over the live processes running the group"
    )
    freshness_samples: int = Field(description="Events with a measured event-to-state time")
    freshness_p50_seconds: float | None = None
    freshness_p99_seconds: float | None = None
    recent_events: int = Field(0, description="Events applied over the recent window")
    recent_freshness_samples: int = Field(
        0, description="Event-to-state times measured over the recent window"
    )
    recent_freshness_p50_seconds: float | None = Field(
        None, description="Event-to-state p50 over the recent window; null without events"
    )
    recent_freshness_p99_seconds: float | None = None


class OpsStats(BaseModel):
    measured_at: float
    published: dict[str, int] = Field(
        description="Events written per topic since start, summed over the live processes"
    )
    groups: list[GroupThroughput] = Field(
        description="Consumer groups running in any live process (each summed over processes)"
    )
    window_seconds: float = Field(
        0.0,
        description="What the recent_* figures span: the last minute, less after start (the "
        "longest of the processes' windows)",
    )
    processes: int = Field(
        1,
        description="Processes whose counters are summed (API workers, consumer processes); "
        "1 when Redis, where they write them, does not answer",
    )


class DeadLetterCount(BaseModel):
    consumer_group: str
    source_topic: str
    count: int
    newest_failed_at: datetime


class DeadLetterCounts(BaseModel):
    measured_at: float = Field(description="When the DLQ topic was last read (Unix time)")
    total: int = Field(description="Records in the DLQ topic now (end - start offsets)")
    unread: int = Field(description="Of them, not read yet (a long DLQ takes several reads)")
    counts: list[DeadLetterCount] = Field(
        description="Per consumer group and source topic, over the letters read by this process"
    )


class DeadLetterView(BaseModel):
    dlq_partition: int
    dlq_offset: int
    source_topic: str
    source_partition: int
    source_offset: int
    consumer_group: str
    reason: str = Field(description="Why the consumer rejected it")
    failed_at: datetime
    key: str | None = Field(description="The source key as text (invalid UTF-8 replaced)")
    payload_bytes: int | None = Field(description="Size of the original value; null: null value")
    payload_excerpt: str | None = Field(
        description="The start of the original value as text (invalid UTF-8 replaced)"
    )


class RecentDeadLetters(DeadLetterCounts):
    letters: list[DeadLetterView] = Field(description="The newest dead letters, newest first")


# -- consumer lag (core/lag.py, GET /v1/ops/lag, `streamrec lag`) ------------------------------
class LagStatus(StrEnum):
    """A group's or partition's health over a sliding window of lag samples, after LinkedIn
    Burrow's evaluation rules (the rules are in core/lag.py and the README)."""

    OK = "OK"  # caught up at some point in the window, or moving without falling behind
    UNKNOWN = "UNKNOWN"  # lagging, but the window is not complete yet (or no data)
    WARN = "WARN"  # the committed offset moves, but the lag grew over the whole window
    STALL = "STALL"  # lagging, and the committed offset did not move over the whole window
    STOP = "STOP"  # lagging, and the committed offset has not moved for lag_stop_seconds
    ERR = "ERR"  # the committed offset went backwards in the window (a reset or rewind)


class PartitionLag(BaseModel):
    topic: str
    partition: int
    end_offset: int
    committed_offset: int | None = Field(description="Null: the group never committed here")
    lag: int = Field(description="end_offset - committed offset (or - the log start)")
    lag_seconds: float | None = Field(
        None,
        description="Age of the oldest unconsumed record (its Kafka timestamp); null when "
        "it could not be read in time",
    )
    status: LagStatus = LagStatus.UNKNOWN


class GroupLag(BaseModel):
    group: str
    partitions: list[PartitionLag]
    total_lag: int
    max_lag_seconds: float | None = None
    status: LagStatus = Field(
        LagStatus.UNKNOWN, description="The worst of its partitions' statuses"
    )
    members: int | None = Field(
        None,
        description="Members in the group (DescribeGroups); null where the broker does not "
        "serve it (the embedded mock cluster)",
    )


class LagReport(BaseModel):
    groups: list[GroupLag]
    total_lag: int
    measured_at: float = Field(description="When Kafka was read (Unix time, seconds)")
