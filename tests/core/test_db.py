"""Engines opened by the one factory: JSON columns are written the way json.dumps would."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import JSON, Column, Integer, MetaData, Table, insert, select, text

from streamrec.core.db import create_db_engine


def test_json_columns_keep_values_and_turn_integer_keys_into_strings(tmp_path: Path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'json.db'}")
    table = Table("docs", MetaData(), Column("id", Integer, primary_key=True), Column("body", JSON))
    table.metadata.create_all(engine)
    body = {"offsets": {0: 12, 3: 40}, "state": [0.25, -1.5], "note": "é", "none": None}
    with engine.begin() as conn:
        conn.execute(insert(table), [{"id": 1, "body": body}])
    with engine.connect() as conn:
        stored = conn.execute(select(table.c.body)).scalar_one()
        raw = conn.execute(text("SELECT body FROM docs")).scalar_one()
    engine.dispose()
    assert stored == {
        "offsets": {"0": 12, "3": 40},
        "state": [0.25, -1.5],
        "note": "é",
        "none": None,
    }
    assert raw.startswith('{"offsets":{"0":12')  # compact: what orjson writes
