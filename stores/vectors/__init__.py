"""Vector collections: one ``VectorStore`` interface, two backends, and a resumable bulk upsert.

Storage is opened by URL scheme, one module per backend:

- ``base``: the ``VectorStore`` interface, its shared types (``Hit``, ``Record``,
  ``VectorBatch``, ...) and the collection/alias naming (``items_<model>__v<N>`` behind the
  alias ``items_<model>``, ``users_<model>__v<N>``, ``items_content``).
- ``edge``: ``EdgeVectorStore``, Qdrant Edge in-process (``embedded``, the default).
- ``server``: ``QdrantServerVectorStore``, a ``QdrantClient`` (``http(s)://``; local mode in
  tests).
- ``bulk``: ``bulk_upsert``, batched, retried and resumable from a checkpoint.
- ``host``: ``serve_vector_store``, a store's methods over HTTP from the process that owns it
  (Edge shards open in one process only), on that process's event loop.
- ``remote``: ``RemoteVectorStore``, the client other processes use when
  ``STREAMREC_VECTOR_HOST_URL`` is set (imported on first use, like ``host``: the CLI does
  not pay for uvicorn and httpx).

Import the public names from ``streamrec.stores.vectors``; the submodules are the implementation.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

from streamrec.core.errors import ConfigurationError
from streamrec.stores.vectors.base import (
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
from streamrec.stores.vectors.bulk import (
    BatchSource,
    BulkResult,
    Checkpoint,
    RetryPolicy,
    array_source,
    bulk_upsert,
)
from streamrec.stores.vectors.edge import EdgeVectorStore
from streamrec.stores.vectors.server import QdrantServerVectorStore

if TYPE_CHECKING:
    from streamrec.core.settings import Settings
    from streamrec.stores.vectors.host import VectorHost, create_vector_host_app, serve_vector_store
    from streamrec.stores.vectors.remote import RemoteVectorStore

# Imported on first access (module __getattr__): they pull in uvicorn, Starlette and httpx.
_LAZY = {
    "RemoteVectorStore": "streamrec.stores.vectors.remote",
    "VectorHost": "streamrec.stores.vectors.host",
    "create_vector_host_app": "streamrec.stores.vectors.host",
    "serve_vector_store": "streamrec.stores.vectors.host",
}

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
    "RemoteVectorStore",
    "RetryPolicy",
    "VectorBatch",
    "VectorHost",
    "VectorStore",
    "Vectors",
    "array_source",
    "bulk_upsert",
    "create_vector_host_app",
    "item_version_name",
    "items_alias",
    "open_vector_store",
    "parse_version",
    "serve_vector_store",
    "user_version_name",
    "users_collection",
]


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def open_vector_store(
    settings_or_url: Settings | str, base_dir: Path | str | None = None, *, timeout: int = 60
) -> VectorStore:
    """The store a URL names.

    ``embedded`` → Qdrant Edge under ``base_dir`` (default ``<var_dir>/qdrant``);
    ``http(s)://...`` → a Qdrant server; ``:memory:`` or ``path:<dir>`` → qdrant-client local
    mode (tests only: slow beyond a few thousand points, see DESIGN.md §2).

    Settings with ``vector_host_url`` (an ``http(s)://`` URL, e.g. ``http://127.0.0.1:PORT``)
    → a ``RemoteVectorStore`` on the vector host another process serves (``host.py``), with
    ``vector_host_token``; ``qdrant_url`` is then not opened here. The owning process itself
    must run without ``vector_host_url``.
    """
    if isinstance(settings_or_url, str):
        url = settings_or_url
    elif settings_or_url.vector_host_url.strip():
        from streamrec.stores.vectors.remote import RemoteVectorStore

        token = settings_or_url.vector_host_token
        return RemoteVectorStore(
            settings_or_url.vector_host_url,
            token.get_secret_value() if token is not None else "",
            timeout_seconds=settings_or_url.vector_host_timeout_seconds,
        )
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
