"""Payload refreshes: a row whose payload or name columns changed, but not its text, keeps its
point and vectors; the point's payload is rewritten in place (Qdrant's set_payload).

The refresh entries come from a trigger (triggers.py) through the tombstone queue, which the
sync drains for every collection of the table (deletes.py). Each key is claimed first, like a
delete's, so a refresh never races a worker writing the row's point.
"""

from __future__ import annotations

from collections.abc import Sequence

from qdrant_client import QdrantClient, models

from vector_pipeline.database import usable
from vector_pipeline.points import existing_row_points, payload_fields
from vector_pipeline.qdrant_retry import retry_write
from vector_pipeline.source import SourceTable


def refresh_payloads(
    source: SourceTable, qdrant: QdrantClient, collection: str, keys: Sequence[str]
) -> set[str]:
    """Rewrite the payload of the points of `keys` (key texts) from their rows now; return the
    keys a worker holds (their refresh waits for a later drain). Rows that are gone and points
    that do not exist are passed over: a delete or a sync deals with them."""
    table = source.config
    claimed = source.claims.claim_keys(collection, list(dict.fromkeys(keys)))
    try:
        rows = source.payload_values(claimed)
        # Every chunk of a row carries the row's payload (points.py).
        existing = existing_row_points(qdrant, table.data_type, collection, list(rows))
        operations: list[models.UpdateOperation] = []
        for key, ids in existing.items():
            row = rows[key]
            if row.problem:
                # Its points keep the payload they have; the next text change re-syncs it.
                continue
            top, shown = payload_fields(
                data_type=table.data_type,
                key_text=key,
                name=row.values.get(table.name_column) if table.name_column else None,
                payload_values=row.payload,
            )
            operations.append(
                models.SetPayloadOperation(
                    set_payload=models.SetPayload(payload=top, points=list(ids))
                )
            )
            if shown:
                operations.append(
                    models.SetPayloadOperation(
                        set_payload=models.SetPayload(
                            payload=shown, points=list(ids), key="meta_data"
                        )
                    )
                )
        if operations:
            # Setting the same values again is harmless, so a passing failure is retried.
            retry_write(
                f"payload update of {len(operations)} operations in {collection}",
                lambda: qdrant.batch_update_points(collection, operations, wait=True),
            )
    finally:
        if usable(source.conn):  # else the claims went with the session
            source.claims.release(collection, claimed)
    got = set(claimed)
    return {key for key in keys if key not in got}
