"""Claims: several workers share one table's sync into one collection, and no row is embedded twice.

A worker claims a batch in the statement that reads it: the pending rows are picked with
`FOR NO KEY UPDATE SKIP LOCKED` (two workers reading at once skip each other's rows, and a row
marked since the statement's snapshot is re-checked and dropped) and inserted into the claim
table with `ON CONFLICT DO NOTHING` (a row another worker claimed a moment ago is not returned).
The claim is held while the batch is embedded and written, with no row lock and no open
transaction, and is released in the transaction that marks the rows, so another worker sees
either the claim or the mark, never neither.

A claim belongs to a database session, named by its pid and start time. A worker that dies
leaves claims whose session is gone; any live sync frees them (`free_dead`) and embeds those
rows itself. The drain of deleted rows claims the keys it deletes points for, so it never
removes a point a worker is writing for a re-inserted row with the same key.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from psycopg import sql

from vector_pipeline.database_setup import CLAIM_TABLE


@dataclass(frozen=True)
class Worker:
    """The database session a claim belongs to."""

    pid: int
    backend_start: dt.datetime

    @classmethod
    def of(cls, conn: psycopg.Connection) -> Worker:
        pid, started = conn.execute(
            "SELECT pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()"
        ).fetchone()
        return cls(pid, started)


# Sessions that are alive now; a claim whose session is not among them is dead. Another
# role's session shows its pid but a NULL start to a role without pg_read_all_stats: then
# the pid alone decides, which errs towards keeping the claim (a reused pid only delays).
_ALIVE = (
    "SELECT 1 FROM pg_stat_activity AS a WHERE a.pid = c.pid "
    "AND (a.backend_start = c.backend_start OR a.backend_start IS NULL)"
)


class Claims:
    """The claims of one table, held by the session of `conn`."""

    def __init__(self, conn: psycopg.Connection, state_schema: str, table_name: str) -> None:
        self.conn = conn
        self.table_name = table_name
        self.relation = sql.Identifier(state_schema, CLAIM_TABLE)
        self.worker = Worker.of(conn)

    def unclaimed(self, collection: str, key_text: sql.Composable) -> sql.Composable:
        """True for a row (its key text: `key_text`, see points.py) that no worker has claimed.

        `NOT IN`, not `NOT EXISTS`: the claim table is small and churns, so its statistics say
        "one row" and for `NOT EXISTS` the planner rescans every claim for every row (50 ms a
        batch among 1,280 claims). `NOT IN` over a non-null column is one hashed set per read.
        """
        return sql.SQL(
            "{key_text} NOT IN (SELECT c.row_key FROM {claims} AS c "
            "WHERE c.table_name = {name} AND c.collection = {collection})"
        ).format(**self._names(collection), key_text=key_text)

    def insert(
        self, collection: str, picked: sql.Composable, key_text: sql.Identifier
    ) -> sql.Composable:
        """`INSERT ... RETURNING row_key` claiming the keys (column `key_text`) of CTE `picked`."""
        return sql.SQL(
            "INSERT INTO {claims} (table_name, collection, row_key, pid, backend_start) "
            "SELECT {name}, {collection}, {key_text}, {pid}, {started} FROM {picked} "
            "ON CONFLICT DO NOTHING RETURNING row_key"
        ).format(
            **self._names(collection),
            key_text=key_text,
            pid=sql.Literal(self.worker.pid),
            started=sql.Literal(self.worker.backend_start),
            picked=picked,
        )

    def _names(self, collection: str) -> dict[str, sql.Composable]:
        """The claim table and the literals naming this table's claims on `collection`."""
        return {
            "claims": self.relation,
            "name": sql.Literal(self.table_name),
            "collection": sql.Literal(collection),
        }

    def claim_keys(self, collection: str, keys: Sequence[str]) -> list[str]:
        """Claim the key texts `keys` for this session; return the ones it got."""
        if not keys:
            return []
        got = {
            row[0]
            for row in self.conn.execute(
                sql.SQL(
                    "INSERT INTO {} (table_name, collection, row_key, pid, backend_start) "
                    "SELECT %s, %s, k, %s, %s FROM unnest(%s::text[]) AS k "
                    "ON CONFLICT DO NOTHING RETURNING row_key"
                ).format(self.relation),
                (self.table_name, collection, self.worker.pid, self.worker.backend_start, keys),
            )
        }
        return [key for key in keys if key in got]

    def release(self, collection: str, keys: Sequence[str]) -> None:
        """Drop this session's claims on the key texts `keys` (inside the caller's
        transaction, if any)."""
        if keys:
            self.conn.execute(
                # A join, which PostgreSQL hashes; `IN (SELECT ...)` became a nested loop
                # (12 ms rather than 0.8 ms for 256 keys).
                sql.SQL(
                    "DELETE FROM {claims} AS c USING unnest(%s::text[]) AS v(k) "
                    "WHERE c.table_name = %s AND c.collection = %s AND c.pid = %s "
                    "AND c.backend_start = %s AND c.row_key = v.k"
                ).format(claims=self.relation),
                (
                    list(keys),
                    self.table_name,
                    collection,
                    self.worker.pid,
                    self.worker.backend_start,
                ),
            )

    def release_all(self, collection: str) -> int:
        """Drop every claim this session holds on the collection (a sync that stops early)."""
        return self.conn.execute(
            sql.SQL(
                "DELETE FROM {} WHERE table_name = %s AND collection = %s AND pid = %s "
                "AND backend_start = %s"
            ).format(self.relation),
            (self.table_name, collection, self.worker.pid, self.worker.backend_start),
        ).rowcount

    def free_dead(self, collection: str) -> int:
        """Drop the claims of sessions that have ended; return how many rows were freed."""
        return self.conn.execute(
            sql.SQL(
                "DELETE FROM {} AS c WHERE c.table_name = %s AND c.collection = %s "
                "AND NOT EXISTS (" + _ALIVE + ")"
            ).format(self.relation),
            (self.table_name, collection),
        ).rowcount
