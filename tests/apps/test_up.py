"""``streamrec up``'s plan, without starting it (its processes: test_up_processes.py)."""

from __future__ import annotations

import os

import pytest

from streamrec.apps.up import default_consumer_processes, split_groups
from streamrec.schemas.topics import DEFAULT_GROUPS, ConsumerGroup

FEATURES, ARCHIVE, VECTORS, ONLINE_RL, RETRAIN = (
    ConsumerGroup.FEATURES,
    ConsumerGroup.ARCHIVE,
    ConsumerGroup.VECTORS,
    ConsumerGroup.ONLINE_RL,
    ConsumerGroup.RETRAIN,
)


@pytest.mark.parametrize(
    ("processes", "expected"),
    [
        (1, [[FEATURES, ARCHIVE, VECTORS, ONLINE_RL, RETRAIN]]),
        (2, [[VECTORS, RETRAIN], [FEATURES, ARCHIVE, ONLINE_RL]]),
        (3, [[VECTORS, RETRAIN], [FEATURES, ONLINE_RL], [ARCHIVE]]),
        (5, [[VECTORS, RETRAIN], [FEATURES], [ARCHIVE], [ONLINE_RL]]),  # never an empty share
    ],
)
def test_groups_that_write_vectors_stay_with_the_shards_and_the_rest_spread(
    processes: int, expected: list[list[ConsumerGroup]]
) -> None:
    assert DEFAULT_GROUPS == (FEATURES, ARCHIVE, VECTORS, ONLINE_RL, RETRAIN)
    assert split_groups(DEFAULT_GROUPS, processes) == expected


def test_without_vector_groups_the_first_process_takes_a_share() -> None:
    assert split_groups([FEATURES, ARCHIVE], 2) == [[FEATURES], [ARCHIVE]]
    assert split_groups([FEATURES], 3) == [[FEATURES]]
    assert split_groups([], 2) == [[]]  # `--groups none`: one process, no group


@pytest.mark.parametrize(("cores", "expected"), [(1, 1), (2, 2), (8, 2)])
def test_the_vectors_group_has_a_process_of_its_own_given_two_cores(
    monkeypatch: pytest.MonkeyPatch, cores: int, expected: int
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(cores)), raising=False)
    assert default_consumer_processes() == expected
