"""The Qdrant side: opening a client safely, the collection layout, and writing points.

The layout is the one the reference design wrote through Agno's Qdrant store in hybrid mode, so
applications that searched its collections keep working: named vectors `dense` (cosine) and
`sparse` (BM25 term weights, IDF applied by Qdrant); the ids and payloads are points.py's.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qdrant_client import QdrantClient, models

from vector_pipeline.failpoints import failpoint
from vector_pipeline.locations import QdrantLocation, positive_int
from vector_pipeline.messages import shorten
from vector_pipeline.qdrant_retry import retry_write
from vector_pipeline.sparse import SparseVector

DENSE = "dense"
SPARSE = "sparse"

log = logging.getLogger(__name__)


class CollectionMismatchError(RuntimeError):
    """An existing collection's layout does not fit the model that would write to it."""


# Local mode lets one client hold a storage folder, even within a process. Clients in one
# process share an open client; other processes (Dagster run workers, the CLI) queue on a file
# lock instead of failing on Qdrant's own "already accessed" error.
_local_clients: dict[str, _SharedClient] = {}
_local_guard = threading.Lock()


@dataclass
class _SharedClient:
    client: QdrantClient
    lock_file: Any
    users: int = 0


class QdrantBusyError(RuntimeError):
    """The local-mode folder is held by another process and the caller would not wait."""


class QdrantStorageError(RuntimeError):
    """The local-mode folder cannot be used (not writable, a file, ...); one line."""


def _storage_error(path: str, exc: OSError) -> QdrantStorageError:
    reason = exc.strerror or type(exc).__name__
    if isinstance(exc, FileExistsError | NotADirectoryError):
        reason = "it, or a folder above it, is a file, not a folder"
    return QdrantStorageError(
        f"Qdrant local storage {shorten(path)}: cannot use it ({reason}); set QDRANT_PATH to a "
        "writable folder, or QDRANT_URL to a server"
    )


def _acquire_file_lock(
    lock_path: Path, path: str, wait: bool, on_wait: Callable[[str], None]
) -> Any:
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(lock_path, "a+")  # noqa: SIM115 - held until the last user closes
    except OSError as exc:
        raise _storage_error(path, exc) from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        if not wait:
            handle.close()
            raise QdrantBusyError(
                f"Qdrant local storage {path} is in use by another process"
            ) from None
        on_wait(
            f"Qdrant: local storage {shorten(path)} is in use by another process; waiting for "
            "it (a sync, a search or a Dagster run holds it)"
        )
        started = time.monotonic()
        fcntl.flock(handle, fcntl.LOCK_EX)
        log.info("Got Qdrant local storage after %.1f s", time.monotonic() - started)
    return handle


@contextmanager
def open_qdrant(
    location: QdrantLocation,
    *,
    wait: bool = True,
    on_wait: Callable[[str], None] = log.warning,
) -> Iterator[QdrantClient]:
    """A client for `location`; in local mode, waits while another process holds the folder,
    saying so through `on_wait` (or, with `wait=False`, raises QdrantBusyError). A folder that
    cannot be used raises QdrantStorageError."""
    if location.url:
        client = QdrantClient(
            url=location.url,
            api_key=location.api_key,
            timeout=location.timeout,
            prefer_grpc=location.prefer_grpc,
            grpc_port=location.grpc_port,
        )
        try:
            yield client
        finally:
            client.close()
        return

    path = os.path.abspath(location.path or "")
    with _local_guard:
        shared = _local_clients.get(path)
        if shared is None:
            handle = _acquire_file_lock(Path(path + ".lock"), path, wait, on_wait)
            try:
                client = QdrantClient(path=path)
            except OSError as exc:
                handle.close()
                raise _storage_error(path, exc) from None
            except BaseException:
                handle.close()
                raise
            shared = _local_clients[path] = _SharedClient(client=client, lock_file=handle)
        shared.users += 1
    try:
        yield shared.client
    finally:
        with _local_guard:
            shared.users -= 1
            if shared.users == 0:
                del _local_clients[path]
                shared.client.close()
                shared.lock_file.close()  # releases the flock


def layout_problem(client: QdrantClient, name: str, dimensions: int) -> str | None:
    """Why the existing collection `name` cannot hold this pipeline's points for a model of
    `dimensions` (a phrase that follows the collection's name), or None when it can."""
    params = client.get_collection(name).config.params
    vectors = params.vectors if isinstance(params.vectors, dict) else {}
    sparse = params.sparse_vectors or {}
    if DENSE not in vectors or SPARSE not in sparse:
        return f"lacks the named vectors {DENSE!r} and {SPARSE!r} of a hybrid collection"
    if vectors[DENSE].size != dimensions:
        return (
            f"holds {vectors[DENSE].size}-dimensional vectors, but the model is configured "
            f"for {dimensions}"
        )
    if vectors[DENSE].distance != models.Distance.COSINE:
        return f"compares dense vectors by {vectors[DENSE].distance}, not cosine"
    return None


def ensure_collection(client: QdrantClient, name: str, dimensions: int) -> bool:
    """Create `name` with the hybrid layout, or check an existing one fits; True if created."""
    if client.collection_exists(name):
        problem = layout_problem(client, name, dimensions)
        if problem is not None:
            raise CollectionMismatchError(
                f"Qdrant collection {name!r} {problem}; it was not written for this model. "
                "Fix `dimensions` in config/embeddings.yaml, give the model a new id (a "
                "collection of its own), or rename collection_base in config/tables.yaml."
            )
        sparse = client.get_collection(name).config.params.sparse_vectors or {}
        if sparse[SPARSE].modifier != models.Modifier.IDF:
            # Agno creates hybrid collections so; BM25 scores without IDF rank unlike ours.
            raise CollectionMismatchError(
                f"Qdrant collection {name!r} has a sparse vector without the IDF modifier, as "
                "Agno's Qdrant store creates it; take the collection over with "
                "`vector-pipeline adopt` (README: Switching from the reference design)"
            )
        return False
    client.create_collection(
        name,
        vectors_config={
            DENSE: models.VectorParams(size=dimensions, distance=models.Distance.COSINE)
        },
        sparse_vectors_config={SPARSE: models.SparseVectorParams(modifier=models.Modifier.IDF)},
    )
    # Readers filter by table and row; on a server these make such filters cheap. Local mode
    # ignores payload indexes and warns about it, which would only be noise.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Payload indexes have no effect")
        for key in ("meta_data.table", "meta_data.data_type", "content_hash"):
            client.create_payload_index(name, key, models.PayloadSchemaType.KEYWORD)
    return True


def foreign_point(qdrant: QdrantClient, collection: str) -> str | None:
    """The id of a point in `collection` that this pipeline did not write (no
    `meta_data.table`), if any: one scrolled id."""
    page, _ = qdrant.scroll(
        collection,
        scroll_filter=models.Filter(
            must=[models.IsEmptyCondition(is_empty=models.PayloadField(key="meta_data.table"))]
        ),
        limit=1,
        with_payload=False,
    )
    return str(page[0].id) if page else None


class ForeignPointsError(RuntimeError):
    """The collection holds points another writer made; syncing would pay for every row."""


def refuse_foreign_points(qdrant: QdrantClient, collection: str, table: str) -> None:
    """Before a table's first sync into an existing collection: refuse a collection holding
    points this pipeline did not write (the reference design's, through Agno), whose rows a
    sync could not find and would embed again beside them."""
    found = foreign_point(qdrant, collection)
    if found is not None:
        raise ForeignPointsError(
            f"{table}: collection {collection} holds points another writer made (e.g. "
            f"{found}, without meta_data.table); run `vector-pipeline adopt` to take them over "
            "without embedding again (README: Switching from the reference design)"
        )


@dataclass(frozen=True)
class PointData:
    id: str
    dense: Sequence[float]
    sparse: SparseVector
    payload: dict[str, Any]


# Points per upsert request: keeps a request of 1536-d vectors with long texts in payload well
# under a server's request size limit (32 MiB by default).
UPSERT_CHUNK_ENV = "VECTOR_PIPELINE_QDRANT_UPSERT_CHUNK"
UPSERT_CHUNK = 128


def upsert_points(client: QdrantClient, collection: str, points: Sequence[PointData]) -> None:
    """Write points and wait until Qdrant has applied them, so marking rows after is safe.

    Sent in chunks of $VECTOR_PIPELINE_QDRANT_UPSERT_CHUNK points (default 128); a chunk that
    fails for a passing reason is sent again (see qdrant_retry.retry_write).
    """
    size = positive_int(UPSERT_CHUNK_ENV, UPSERT_CHUNK)
    for start in range(0, len(points), size):
        if start:
            failpoint("between_upsert_chunks")
        chunk = [
            models.PointStruct(
                id=point.id,
                vector={
                    DENSE: list(point.dense),
                    SPARSE: models.SparseVector(
                        indices=point.sparse.indices, values=point.sparse.values
                    ),
                },
                payload=point.payload,
            )
            for point in points[start : start + size]
        ]
        # Retried per chunk: the points are the same each time, so a resend overwrites.
        retry_write(
            f"upsert of {len(chunk)} points into {collection}",
            lambda chunk=chunk: client.upsert(collection, points=chunk, wait=True),
        )


def delete_points(client: QdrantClient, collection: str, ids: Sequence[str]) -> None:
    """Delete points by id and wait until Qdrant has applied it; retried like an upsert."""
    if ids:
        selector = models.PointIdsList(points=list(ids))
        retry_write(
            f"delete of {len(ids)} points from {collection}",
            lambda: client.delete(collection, points_selector=selector, wait=True),
        )


@dataclass(frozen=True)
class Hit:
    score: float
    payload: dict[str, Any]


def hybrid_query(
    client: QdrantClient,
    collection: str,
    dense: Sequence[float],
    sparse: SparseVector,
    limit: int = 5,
    query_filter: models.Filter | None = None,
) -> list[Hit]:
    """Dense and sparse candidates fused by reciprocal rank, as Agno's hybrid search does;
    `query_filter` applies to both candidate lists."""
    prefetch_limit = max(20, limit * 4)
    response = client.query_points(
        collection,
        prefetch=[
            models.Prefetch(
                query=list(dense), using=DENSE, limit=prefetch_limit, filter=query_filter
            ),
            models.Prefetch(
                query=models.SparseVector(indices=sparse.indices, values=sparse.values),
                using=SPARSE,
                limit=prefetch_limit,
                filter=query_filter,
            ),
        ],
        query=models.FusionQuery(fusion=models.Fusion.RRF),
        limit=limit,
        with_payload=True,
    )
    return [Hit(score=point.score, payload=point.payload or {}) for point in response.points]
