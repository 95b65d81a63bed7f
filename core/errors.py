"""The domain error tree. Only ``api/`` maps these to HTTP status codes.

StreamrecError
├── ConfigurationError      settings that cannot work (missing key, bad URL)
├── ServiceUnavailable      a backing service (Kafka, Redis, SQL, Qdrant) did not answer
├── NotFound                a user, item, model or version that does not exist
├── InvalidInput            a request or event that breaks a rule (the message says which)
├── PublishError            events that could not be written to Kafka after retries
└── StateConflict           stored state has a shape an update cannot apply to (foreign keys)
"""

from __future__ import annotations


class StreamrecError(Exception):
    """Base of every error streamrec raises on purpose."""


class ConfigurationError(StreamrecError):
    """Settings that cannot work."""


class ServiceUnavailable(StreamrecError):
    """A backing service did not answer."""


class NotFound(StreamrecError):
    """The thing asked for does not exist."""


class InvalidInput(StreamrecError):
    """Input that breaks a documented rule."""


class PublishError(StreamrecError):
    """Kafka did not acknowledge events after all retries or within the publish timeout."""

    def __init__(
        self, message: str, failed: int, published: int = 0, event_ids: list[str] | None = None
    ) -> None:
        super().__init__(message)
        self.failed = failed  # not acknowledged: written or not, nobody knows
        self.published = published  # acknowledged by Kafka
        # Every event of the batch, in order: re-sending them with these ids is safe, as
        # consumers drop an event_id they have already applied.
        self.event_ids = event_ids or []


class StateConflict(StreamrecError):
    """Stored state (a Redis key of the wrong type) that an update cannot apply to."""
