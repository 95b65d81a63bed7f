"""Vector collections: one ``VectorStore`` interface, two backends, and a resumable bulk upsert.

Storage is opened by URL scheme, one module per backend:

- ``base``: the ``VectorStore`` interface, its shared types (``Hit``, ``Record``,
  ``VectorBatch``, ...) and the collection/alias naming (``items_<model>__v<N>`` behind the
  alias ``items_<model>``, ``users_<model>__v<N>``, ``items_content``).
- ``edge``: ``EdgeVectorStore``, Qdrant Edge in-process (``embedded``, the default).
- ``server``: ``QdrantServerVectorStore``, a ``QdrantClient`` (``http(s)://``; local mode in
  tests).
- ``bulk``: ``bulk_upsert``, batched, retried and resumable from a checkpoint.

Import the public names from ``stores.vectors``; the submodules are the implementation.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from core.errors import ConfigurationError
from stores.vectors.base import (
    ITEM_PAYLOAD_INDEXES,
    ITEMS_CONTENT,
    Distance,
    FieldType,
    Hit,
    Payloads,
    Record,
    VectorBatch,
    Vectors,
    VectorStore,
    item_version_name,
    items_alias,
    parse_version,
    user_version_name,
    users_collection,
)
from stores.vectors.bulk import (
    BatchSource,
    BulkResult,
    Checkpoint,
    RetryPolicy,
    array_source,
    bulk_upsert,
)
from stores.vectors.edge import EdgeVectorStore
from stores.vectors.server import QdrantServerVectorStore

if TYPE_CHECKING:
    from core.settings import Settings

__all__ = [
    "ITEMS_CONTENT",
    "ITEM_PAYLOAD_INDEXES",
    "BatchSource",
    "BulkResult",
    "Checkpoint",
    "Distance",
    "EdgeVectorStore",
    "FieldType",
    "Hit",
    "Payloads",
    "QdrantServerVectorStore",
    "Record",
    "RetryPolicy",
    "VectorBatch",
    "VectorStore",
    "Vectors",
    "array_source",
    "bulk_upsert",
    "item_version_name",
    "items_alias",
    "open_vector_store",
    "parse_version",
    "user_version_name",
    "users_collection",
]


def open_vector_store(
    settings_or_url: Settings | str, base_dir: Path | str | None = None, *, timeout: int = 60
) -> VectorStore:
    """The store a URL names.

    ``embedded`` → Qdrant Edge under ``base_dir`` (default ``<var_dir>/qdrant``);
    ``http(s)://...`` → a Qdrant server; ``:memory:`` or ``path:<dir>`` → qdrant-client local
    mode (tests only: slow beyond a few thousand points, see DESIGN.md §2).
    """
    if isinstance(settings_or_url, str):
        url = settings_or_url
    else:
        url = settings_or_url.qdrant_url
        base_dir = base_dir if base_dir is not None else settings_or_url.var_dir / "qdrant"
    url = url.strip()
    if url.lower() == "embedded":
        if base_dir is None:
            raise ConfigurationError("the embedded vector store needs a base directory")
        return EdgeVectorStore(base_dir)

    from qdrant_client import QdrantClient

    if url.lower().startswith(("http://", "https://")):
        return QdrantServerVectorStore(QdrantClient(url=url, timeout=timeout))
    # Our lock serialises local mode, which makes sharing its SQLite handle across threads safe.
    if url == ":memory:":
        client = QdrantClient(location=":memory:", force_disable_check_same_thread=True)
        return QdrantServerVectorStore(client)
    if url.startswith("path:"):
        client = QdrantClient(path=url.removeprefix("path:"), force_disable_check_same_thread=True)
        return QdrantServerVectorStore(client)
    raise ConfigurationError(
        f"STREAMREC_QDRANT_URL must be 'embedded', an http(s):// URL, ':memory:' or "
        f"'path:<dir>', got {url!r}"
    )
