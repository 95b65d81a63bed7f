"""Which Kafka log a process talks to: its cluster id and the partitions of its topics.

Offsets only mean something within one log. Real Kafka keeps its cluster id for life; the
embedded broker (librdkafka's mock cluster) is a new, empty, in-memory log on every start, with
a new cluster id each time (measured: ``mockCluster1569474e955c``, then another). State that
stores offsets (the features group's applied offsets in Redis, the archive's coordinates)
records this id beside them, so offsets of one log are never applied to another.
"""

from __future__ import annotations

from collections.abc import Sequence

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from streamrec.core.errors import ServiceUnavailable


async def _admin(bootstrap: list[str], timeout_ms: int) -> AIOKafkaAdminClient:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=timeout_ms)
    try:
        await admin.start()
    except (KafkaError, OSError) as exc:
        await admin.close()
        raise ServiceUnavailable(f"Kafka at {', '.join(bootstrap)} did not answer: {exc}") from exc
    return admin


async def read_log_id(bootstrap: list[str], timeout_ms: int = 5000) -> str:
    """The cluster id of the Kafka cluster at ``bootstrap`` (Metadata v2+, which both real
    Kafka and the mock cluster serve)."""
    admin = await _admin(bootstrap, timeout_ms)
    try:
        cluster = await admin.describe_cluster()
    except (KafkaError, OSError) as exc:
        raise ServiceUnavailable(f"Kafka at {', '.join(bootstrap)} did not answer: {exc}") from exc
    finally:
        await admin.close()
    cluster_id = cluster.get("cluster_id")
    if not cluster_id:
        raise ServiceUnavailable(
            f"Kafka at {', '.join(bootstrap)} reports no cluster id (a broker older than 0.10.1?)"
        )
    return str(cluster_id)


async def topic_partitions(
    bootstrap: list[str], topics: Sequence[str], timeout_ms: int = 5000
) -> list[tuple[str, int]]:
    """(topic, partition) of every partition of ``topics`` that exists now."""
    admin = await _admin(bootstrap, timeout_ms)
    try:
        described = await admin.describe_topics(list(topics))
    except (KafkaError, OSError) as exc:
        raise ServiceUnavailable(f"Kafka at {', '.join(bootstrap)} did not answer: {exc}") from exc
    finally:
        await admin.close()
    return sorted(
        (topic["topic"], part["partition"])
        for topic in described
        if topic["error_code"] == 0
        for part in topic["partitions"]
    )


async def group_members(bootstrap: list[str], group: str, timeout_ms: int = 5000) -> int:
    """Members of consumer group ``group`` now (DescribeGroups: real Kafka serves it, the
    embedded mock cluster does not; callers on the embedded broker check the running `up`)."""
    admin = await _admin(bootstrap, timeout_ms)
    try:
        responses = await admin.describe_consumer_groups([group])
    except (KafkaError, OSError) as exc:
        raise ServiceUnavailable(f"Kafka at {', '.join(bootstrap)} did not answer: {exc}") from exc
    finally:
        await admin.close()
    return sum(
        len(described.get("members") or [])
        for response in responses
        for described in response.to_object().get("groups", [])
    )
