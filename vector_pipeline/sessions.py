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
import uuid
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
    # Drawn by the database for each session: what ties a Dagster run to this very session,
    # since ids repeat after `TRUNCATE ... RESTART IDENTITY` or across source databases.
    run_token: uuid.UUID | None = None

    @property
    def finished(self) -> bool:
        return self.status in (COMPLETED, FAILED)


class SessionStore:
    """The `embedding_session` table in `schema`, over an autocommit connection.

    With `run_token`, every write also requires the session's token (`Session.run_token`): a
    run launched for an earlier session with the same id never touches a later one.
    """

    def __init__(self, conn: psycopg.Connection, schema: str, run_token: str | None = None) -> None:
        self.conn = conn
        self.table = sql.Identifier(schema, SESSION_TABLE)
        self.run_token = run_token

    def _execute(self, query: str, params: dict[str, Any]) -> psycopg.Cursor:
        """Run `query` with `{table}` and `{this}` (the session `%(id)s`, and its run token
        when the store has one) filled in; values always go as named parameters."""
        this = "id = %(id)s AND (%(run_token)s::uuid IS NULL OR run_token = %(run_token)s::uuid)"
        return self.conn.execute(
            sql.SQL(query).format(table=self.table, this=sql.SQL(this)),
            {**params, "run_token": self.run_token},
        )

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
            "VALUES (%(model)s, %(tables)s, %(token_budget)s, %(cost_budget)s) RETURNING id",
            {
                "model": model,
                "tables": tables or None,
                "token_budget": token_budget,
                "cost_budget": cost_budget,
            },
        ).fetchone()
        return row[0]

    def reserve_tokens(self, session_id: int, tokens: int, limit: int | None) -> bool:
        """Count `tokens` as spent if that stays within `limit`; False (nothing counted) if not.

        One statement, so steps of one run that reserve at once never overspend together.
        """
        cursor = self._execute(
            "UPDATE {table} SET tokens_used = tokens_used + %(tokens)s WHERE {this} "
            "AND status = 'PROCESSING' "
            "AND (%(limit)s::bigint IS NULL OR tokens_used + %(tokens)s <= %(limit)s)",
            {"tokens": tokens, "id": session_id, "limit": limit},
        )
        return cursor.rowcount == 1

    def get(self, session_id: int) -> Session | None:
        cursor = self._execute("SELECT * FROM {table} WHERE {this}", {"id": session_id})
        cursor.row_factory = class_row(Session)
        return cursor.fetchone()

    def pending(self, after_id: int | None = None, limit: int = 50) -> list[Session]:
        """PENDING sessions after `after_id` (None: from the first, whatever its id, zero and
        negative ids included), oldest first (served by the partial index)."""
        with self.conn.cursor(row_factory=class_row(Session)) as cursor:
            cursor.execute(
                sql.SQL(
                    "SELECT * FROM {table} WHERE status = 'PENDING' "
                    "AND (%s::bigint IS NULL OR id > %s) ORDER BY id LIMIT %s"
                ).format(table=self.table),
                (after_id, after_id, limit),
            )
            return cursor.fetchall()

    def start(self, session_id: int, run_id: str, total_items: int) -> bool:
        """PENDING -> PROCESSING with the run's total; False if another step got there first."""
        cursor = self._execute(
            "UPDATE {table} SET status = 'PROCESSING', started_at = now(), run_id = %(run_id)s, "
            "total_items = %(total)s, processed_items = 0, progress = 0 "
            "WHERE {this} AND status = 'PENDING'",
            {"run_id": run_id, "total": total_items, "id": session_id},
        )
        return cursor.rowcount == 1

    def add_progress(self, session_id: int, rows: int) -> None:
        """Count `rows` more as processed, atomically; progress stays below 100 until the end."""
        self._execute(
            "UPDATE {table} SET processed_items = processed_items + %(rows)s, "
            # bigint: processed_items * 100 overflows integer past ~21.5 million rows.
            "progress = LEAST(99, ((processed_items + %(rows)s)::bigint * 100) "
            "/ GREATEST(total_items, 1)) "
            "WHERE {this} AND status = 'PROCESSING'",
            {"rows": rows, "id": session_id},
        )

    def complete(self, session_id: int) -> bool:
        cursor = self._execute(
            "UPDATE {table} SET status = 'COMPLETED', progress = 100, finished_at = now(), "
            "error_message = NULL WHERE {this} AND status IN ('PENDING', 'PROCESSING')",
            {"id": session_id},
        )
        return cursor.rowcount == 1

    def fail(self, session_id: int, message: str, run_id: str | None = None) -> bool:
        """Mark an unfinished session FAILED; a finished one is left as it is."""
        cursor = self._execute(
            "UPDATE {table} SET status = 'FAILED', finished_at = now(), "
            "error_message = %(message)s, run_id = coalesce(%(run_id)s, run_id) "
            "WHERE {this} AND status IN ('PENDING', 'PROCESSING')",
            {"message": message[:MESSAGE_LIMIT], "run_id": run_id, "id": session_id},
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
