"""The one id registry: dense, stable, append-only, shared by every reader."""

from __future__ import annotations

from sqlalchemy import Engine

from streamrec.core.ids import IdKind, IdRegistry


def test_indices_are_dense_and_stable(engine: Engine) -> None:
    registry = IdRegistry(engine)
    assert registry.assign(IdKind.ITEM, ["a", "b", "a", "c"]) == {"a": 0, "b": 1, "c": 2}
    assert registry.assign(IdKind.ITEM, ["c", "d"]) == {"c": 2, "d": 3}
    assert registry.size(IdKind.ITEM) == 4
    assert registry.external_ids(IdKind.ITEM) == ["a", "b", "c", "d"]


def test_kinds_are_separate_and_other_instances_agree(engine: Engine) -> None:
    first = IdRegistry(engine)
    first.assign(IdKind.USER, ["u1"])
    first.assign(IdKind.ITEM, ["x"])
    second = IdRegistry(engine)  # another process, say: no shared cache
    assert second.lookup(IdKind.USER, ["u1", "nobody"]) == {"u1": 0}
    assert second.assign(IdKind.ITEM, ["y", "x"]) == {"y": 1, "x": 0}
    assert first.lookup(IdKind.ITEM, ["y"]) == {"y": 1}
