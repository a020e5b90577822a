"""`embedding_session`: how any application asks for a sync and watches it happen.

An application inserts a PENDING row; Dagster launches one run for it and writes back status,
totals and progress. Every write here is a single statement, so concurrent table steps of one
run (or a sensor and a run) never lose each other's updates, and every status change is guarded
by the status it expects, so a late writer cannot move a finished session backwards.
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
import os
import re
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import class_row

from vector_pipeline.config import (
    EmbeddingModel,
    JinaModel,
    OpenAIModel,
    ProjectConfig,
    TableConfig,
    collection_name_for,
)
from vector_pipeline.database_setup import SESSION_TABLE
from vector_pipeline.plan import price as price_of
from vector_pipeline.source import SourceTable

PENDING, PROCESSING, COMPLETED, FAILED = "PENDING", "PROCESSING", "COMPLETED", "FAILED"
ACTIVE = (PENDING, PROCESSING)
# Longer messages are cut: the column is read by admin pages, not used as a log.
MESSAGE_LIMIT = 2000


class SessionRequestError(ValueError):
    """A session names a model or table the configuration does not have."""


@dataclass(frozen=True)
class Session:
    id: int
    status: str
    model: str | None
    tables: list[str] | None
    total_items: int
    processed_items: int
    progress: int
    error_message: str | None
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    run_id: str | None
    token_budget: int | None = None
    cost_budget: decimal.Decimal | None = None
    tokens_used: int = 0

    @property
    def finished(self) -> bool:
        return self.status in (COMPLETED, FAILED)


class SessionStore:
    """The `embedding_session` table in `schema`, over an autocommit connection."""

    def __init__(self, conn: psycopg.Connection, schema: str) -> None:
        self.conn = conn
        self.table = sql.Identifier(schema, SESSION_TABLE)

    def _execute(self, query: str, params: tuple[Any, ...] = ()) -> psycopg.Cursor:
        return self.conn.execute(sql.SQL(query).format(table=self.table), params)

    def create(
        self,
        model: str | None = None,
        tables: list[str] | None = None,
        *,
        token_budget: int | None = None,
        cost_budget: float | None = None,
    ) -> int:
        row = self._execute(
            "INSERT INTO {table} (model, tables, token_budget, cost_budget) "
            "VALUES (%s, %s, %s, %s) RETURNING id",
            (model, tables or None, token_budget, cost_budget),
        ).fetchone()
        return row[0]

    def reserve_tokens(self, session_id: int, tokens: int, limit: int | None) -> bool:
        """Count `tokens` as spent if that stays within `limit`; False (nothing counted) if not.

        One statement, so steps of one run that reserve at once never overspend together.
        """
        cursor = self._execute(
            "UPDATE {table} SET tokens_used = tokens_used + %s WHERE id = %s "
            "AND status = 'PROCESSING' AND (%s::bigint IS NULL OR tokens_used + %s <= %s)",
            (tokens, session_id, limit, tokens, limit),
        )
        return cursor.rowcount == 1

    def get(self, session_id: int) -> Session | None:
        with self.conn.cursor(row_factory=class_row(Session)) as cursor:
            cursor.execute(
                sql.SQL("SELECT * FROM {table} WHERE id = %s").format(table=self.table),
                (session_id,),
            )
            return cursor.fetchone()

    def pending(self, after_id: int = 0, limit: int = 50) -> list[Session]:
        """PENDING sessions after `after_id`, oldest first (served by the partial index)."""
        with self.conn.cursor(row_factory=class_row(Session)) as cursor:
            cursor.execute(
                sql.SQL(
                    "SELECT * FROM {table} WHERE status = 'PENDING' AND id > %s "
                    "ORDER BY id LIMIT %s"
                ).format(table=self.table),
                (after_id, limit),
            )
            return cursor.fetchall()

    def start(self, session_id: int, run_id: str, total_items: int) -> bool:
        """PENDING -> PROCESSING with the run's total; False if another step got there first."""
        cursor = self._execute(
            "UPDATE {table} SET status = 'PROCESSING', started_at = now(), run_id = %s, "
            "total_items = %s, processed_items = 0, progress = 0 "
            "WHERE id = %s AND status = 'PENDING'",
            (run_id, total_items, session_id),
        )
        return cursor.rowcount == 1

    def add_progress(self, session_id: int, rows: int) -> None:
        """Count `rows` more as processed, atomically; progress stays below 100 until the end."""
        self._execute(
            "UPDATE {table} SET processed_items = processed_items + %s, "
            # bigint: processed_items * 100 overflows integer past ~21.5 million rows.
            "progress = LEAST(99, ((processed_items + %s)::bigint * 100) "
            "/ GREATEST(total_items, 1)) "
            "WHERE id = %s AND status = 'PROCESSING'",
            (rows, rows, session_id),
        )

    def complete(self, session_id: int) -> bool:
        cursor = self._execute(
            "UPDATE {table} SET status = 'COMPLETED', progress = 100, finished_at = now(), "
            "error_message = NULL WHERE id = %s AND status IN ('PENDING', 'PROCESSING')",
            (session_id,),
        )
        return cursor.rowcount == 1

    def fail(self, session_id: int, message: str, run_id: str | None = None) -> bool:
        """Mark an unfinished session FAILED; a finished one is left as it is."""
        cursor = self._execute(
            "UPDATE {table} SET status = 'FAILED', finished_at = now(), error_message = %s, "
            "run_id = coalesce(%s, run_id) WHERE id = %s AND status IN ('PENDING', 'PROCESSING')",
            (message[:MESSAGE_LIMIT], run_id, session_id),
        )
        return cursor.rowcount == 1


def resolve_request(config: ProjectConfig, session: Session) -> tuple[str, list[TableConfig]]:
    """The model key and tables a session asks for; NULL means the default / every table."""
    model = session.model or config.embeddings.default
    if model not in config.embeddings.models:
        raise SessionRequestError(
            f"session {session.id} names unknown model {model!r}; "
            f"known models: {', '.join(config.embeddings.models)}"
        )
    if not session.tables:
        return model, list(config.tables.tables)
    known = {table.name: table for table in config.tables.tables}
    unknown = [name for name in session.tables if name not in known]
    if unknown:
        raise SessionRequestError(
            f"session {session.id} names unknown table(s) {', '.join(map(repr, unknown))}; "
            f"known tables: {', '.join(known)}"
        )
    return model, [known[name] for name in dict.fromkeys(session.tables)]


def token_limit(session: Session, model_key: str, model: EmbeddingModel) -> int | None:
    """The most tokens the session may spend on `model`: its token budget, or its cost budget
    at the model's price, whichever is smaller (None: no budget)."""
    limits = [session.token_budget] if session.token_budget else []
    if session.cost_budget:
        price = price_of(model)
        if price is None:
            raise SessionRequestError(
                f"session {session.id} has a cost budget but model {model_key!r} has no "
                "price_per_million_tokens in config/embeddings.yaml; add it, or give the "
                "session a token_budget instead"
            )
        if price:  # a free model cannot run out of money
            limits.append(math.floor(float(session.cost_budget) / price * 1_000_000))
    return min(limits) if limits else None


def pending_total(
    conn: psycopg.Connection, config: ProjectConfig, model: str, tables: list[TableConfig]
) -> int:
    """Rows pending across `tables` for `model`: the session's `total_items`."""
    model_id = config.embeddings.models[model].id
    return sum(
        SourceTable.for_config(conn, config, table).pending_count(
            collection_name_for(table.collection_base, model_id)
        )
        for table in tables
    )


def redact(message: str, config: ProjectConfig) -> str:
    """`message` with every secret this process knows replaced by ***.

    Secrets are the API keys the config points at, the Qdrant API key, and passwords inside
    database URLs. Error messages reach admin pages and Dagster's UI, so they are scrubbed even
    where the code that raised them is believed not to include secrets.
    """
    secrets = [
        os.environ.get(model.api_key.variable, "")
        for model in config.embeddings.models.values()
        if isinstance(model, OpenAIModel | JinaModel)
    ]
    secrets.append(os.environ.get("QDRANT_API_KEY", ""))
    for variable in ("DATABASE_URL", "DAGSTER_PG_URL"):
        password = re.search(r"://[^:/@]*:([^@]+)@", os.environ.get(variable, ""))
        if password:
            secrets.append(password.group(1))
    for secret in sorted(filter(None, secrets), key=len, reverse=True):
        if len(secret) >= 4:  # never blank out single letters of ordinary words
            message = message.replace(secret, "***")
    return message[:MESSAGE_LIMIT]
