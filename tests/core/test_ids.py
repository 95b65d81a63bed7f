"""The one id registry: dense, stable, append-only, shared by every reader."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import Engine

from streamrec.core.db import Base, create_db_engine
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


_REGISTER = """
import os, sys, time
from pathlib import Path
from streamrec.core.db import create_db_engine
from streamrec.core.ids import IdKind, IdRegistry

registry = IdRegistry(create_db_engine(sys.argv[1]))
registry.size(IdKind.USER)  # connected
Path(f"{sys.argv[2]}.{os.getpid()}.ready").touch()
while not Path(sys.argv[2]).exists():  # every process starts registering at once
    time.sleep(0.001)
for start in range(0, 2000, 8):  # overlapping batches, as the archive and vectors groups send
    registry.assign(IdKind.USER, [f"u{n}" for n in range(start, start + 16)])
"""


def test_processes_registering_at_once_on_sqlite_agree(tmp_path: Path) -> None:
    """Two consumers processes (the archive and vectors groups) register users at the same
    time: each id gets one index, the indices stay dense, neither process fails."""
    url = f"sqlite:///{tmp_path / 'ids.db'}"
    engine = create_db_engine(url)
    Base.metadata.create_all(engine)
    go = tmp_path / "go"
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _REGISTER, url, str(go)], stderr=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    while len(list(tmp_path.glob("go.*.ready"))) < len(children):
        assert all(child.poll() is None for child in children), "a process ended early"
        time.sleep(0.01)
    go.touch()
    errors = [child.communicate()[1] for child in children]
    assert [child.returncode for child in children] == [0, 0, 0], errors
    external = IdRegistry(engine).external_ids(IdKind.USER)
    assert sorted(external) == sorted(f"u{n}" for n in range(2008))  # each once: 0..2007
