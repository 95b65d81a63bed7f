"""Kafka topic names and consumer group ids: the contract between producers and consumers."""

from __future__ import annotations

from enum import StrEnum


class Topic(StrEnum):
    RATINGS = "streamrec.ratings"
    CLICKS = "streamrec.clicks"
    IMPRESSIONS = "streamrec.impressions"
    ITEMS = "streamrec.items"
    DLQ = "streamrec.dlq"


EVENT_TOPICS: tuple[Topic, ...] = (Topic.ITEMS, Topic.RATINGS, Topic.CLICKS, Topic.IMPRESSIONS)


class ConsumerGroup(StrEnum):
    FEATURES = "streamrec-features"
    ARCHIVE = "streamrec-archive"
    VECTORS = "streamrec-vectors"
    ONLINE_RL = "streamrec-online-rl"
    RETRAIN = "streamrec-retrain"


# What each consumer group reads: subscriptions and lag are both computed from this.
GROUP_TOPICS: dict[ConsumerGroup, tuple[Topic, ...]] = {
    ConsumerGroup.FEATURES: EVENT_TOPICS,
    ConsumerGroup.ARCHIVE: EVENT_TOPICS,
    # What changes a user's vector, and item events (new items' content vectors).
    ConsumerGroup.VECTORS: (Topic.RATINGS, Topic.CLICKS, Topic.ITEMS),
    # Logged slates and the feedback on them.
    ConsumerGroup.ONLINE_RL: (Topic.IMPRESSIONS, Topic.CLICKS, Topic.RATINGS),
    ConsumerGroup.RETRAIN: (Topic.RATINGS,),  # what the embedding models train on
}

# The groups `streamrec up` and `streamrec consume` run. The vectors group only checks the
# items aliases until a model is published, so it is safe on a fresh system; the online-RL
# group learns only once a doc2vec version is active; the retrain group trains a model's first
# version once enough ratings are archived (STREAMREC_RETRAIN_*).
DEFAULT_GROUPS: tuple[ConsumerGroup, ...] = (
    ConsumerGroup.FEATURES,
    ConsumerGroup.ARCHIVE,
    ConsumerGroup.VECTORS,
    ConsumerGroup.ONLINE_RL,
    ConsumerGroup.RETRAIN,
)
