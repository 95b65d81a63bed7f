"""Embedded Redis keeps its data under the var dir: a restart of the server (a restart of
`streamrec up`) finds the feature state it left."""

from __future__ import annotations

from pathlib import Path

import redis

from streamrec.core.embedded import EmbeddedRedis


def test_state_survives_a_restart_in_the_same_directory(tmp_path: Path) -> None:
    directory = tmp_path / "var" / "redis"
    server = EmbeddedRedis(directory)
    client = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        client.hset("a-hash", mapping={"ratings": 3, "rating_sum": 12.5})
        client.zadd("a-zset", {"m1": 1.5})
    finally:
        client.close()
        server.close()

    again = EmbeddedRedis(directory)
    client = redis.Redis.from_url(again.url, decode_responses=True)
    try:
        assert client.hgetall("a-hash") == {"ratings": "3", "rating_sum": "12.5"}
        assert client.zscore("a-zset", "m1") == 1.5
        assert client.config_get("appendonly") == {"appendonly": "yes"}
    finally:
        client.close()
        again.close()


def test_without_a_directory_the_state_is_temporary(tmp_path: Path) -> None:
    server = EmbeddedRedis()
    client = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        client.set("k", "v")
    finally:
        client.close()
        server.close()
    again = EmbeddedRedis()
    client = redis.Redis.from_url(again.url, decode_responses=True)
    try:
        assert client.get("k") is None
    finally:
        client.close()
        again.close()
