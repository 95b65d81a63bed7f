"""The domain error tree. Only ``api/`` maps these to HTTP status codes.

StreamrecError
├── ConfigurationError      settings that cannot work (missing key, bad URL)
├── ServiceUnavailable      a backing service (Kafka, Redis, SQL, Qdrant) did not answer
├── NotFound                a user, item, model or version that does not exist
├── InvalidInput            a request or event that breaks a rule (the message says which)
└── PublishError            events that could not be written to Kafka after retries
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
    """Events could not be written to Kafka after all retries."""

    def __init__(self, message: str, failed: int) -> None:
        super().__init__(message)
        self.failed = failed
