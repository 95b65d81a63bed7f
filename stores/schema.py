"""Create the SQL schema: every table module registers on ``core.db.Base.metadata``."""

from __future__ import annotations

from sqlalchemy import Engine

import core.ids
import stores.catalog
import stores.model_registry
from core.db import Base

_TABLE_MODULES = (core.ids, stores.catalog, stores.model_registry)


def create_schema(engine: Engine) -> None:
    """Create the tables that are missing (idempotent)."""
    Base.metadata.create_all(engine)
