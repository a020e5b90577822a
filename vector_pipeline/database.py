"""Connecting to PostgreSQL: bounded waits, a word while a lock blocks us, no password in errors.

Every connection gets libpq's `connect_timeout` and TCP keepalives (a dead server or a cut
network fails instead of hanging), and `lock_timeout` / `statement_timeout` through `options`.
Each has a default that the environment overrides (seconds; 0 turns a timeout off):

    VECTOR_PIPELINE_PG_CONNECT_TIMEOUT    10
    VECTOR_PIPELINE_PG_LOCK_TIMEOUT       120
    VECTOR_PIPELINE_PG_STATEMENT_TIMEOUT  3600

Settings the URL already gives (or libpq's PGCONNECT_TIMEOUT / PGOPTIONS) win over these.
A `LockWatch` looks, from a second connection, at what a connection's statement waits for and
reports "waiting for a lock on public.doc held by pid N"; when `lock_timeout` ends the wait,
`open_database` turns PostgreSQL's bare "canceling statement due to lock timeout" into an error
that names the table and the holder.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.pq import TransactionStatus

from vector_pipeline.locations import SettingError, seconds
from vector_pipeline.messages import first_line, shorten

CONNECT_TIMEOUT_ENV = "VECTOR_PIPELINE_PG_CONNECT_TIMEOUT"
LOCK_TIMEOUT_ENV = "VECTOR_PIPELINE_PG_LOCK_TIMEOUT"
STATEMENT_TIMEOUT_ENV = "VECTOR_PIPELINE_PG_STATEMENT_TIMEOUT"
DEFAULTS = {CONNECT_TIMEOUT_ENV: 10.0, LOCK_TIMEOUT_ENV: 120.0, STATEMENT_TIMEOUT_ENV: 3600.0}
# Probe an idle peer after 30 s, then every 10 s; three unanswered probes end the connection.
KEEPALIVES = {
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
}
APPLICATION = "vector_pipeline"

log = logging.getLogger(__name__)


class DatabaseError(RuntimeError):
    """PostgreSQL could not be reached, was lost, or kept us waiting too long; one line."""


def setting(variable: str) -> float:
    """A timeout in seconds from the environment (0: no limit), else its default."""
    try:
        return seconds(variable, DEFAULTS[variable])
    except SettingError as exc:
        raise DatabaseError(f"{exc} (0 for no limit)") from None


def _parse(database_url: str) -> dict[str, Any]:
    try:
        return conninfo_to_dict(database_url)
    except psycopg.ProgrammingError as exc:
        # libpq quotes the offending token, which may be the password: keep only its words.
        reason = re.sub(
            r'"([^"]*)"', lambda m: m[0] if len(m[1]) <= 1 else "(...)", first_line(exc)
        )
        raise DatabaseError(
            f"PostgreSQL: DATABASE_URL is not a valid connection URL ({reason}); expected "
            "postgresql://user:password@host:port/database"
        ) from None


def describe(database_url: str) -> str:
    """Where `database_url` points, without its password, for messages."""
    params = _parse(database_url)
    shown = {k: params[k] for k in ("host", "port", "dbname", "user") if params.get(k)}
    return make_conninfo(**shown) or "the default local server"


def connection_params(database_url: str) -> dict[str, Any]:
    """The keyword arguments for `psycopg.connect`: the URL's own, plus the timeouts and
    keepalives it does not set. Raises DatabaseError (never quoting the URL) if it is malformed."""
    params = _parse(database_url)
    connect_timeout = setting(CONNECT_TIMEOUT_ENV)
    if "connect_timeout" not in params and not os.environ.get("PGCONNECT_TIMEOUT"):
        params["connect_timeout"] = str(max(2, round(connect_timeout)) if connect_timeout else 0)
    for key, value in KEEPALIVES.items():
        params.setdefault(key, value)
    options = params.get("options") or os.environ.get("PGOPTIONS", "")
    for name, variable in (
        ("lock_timeout", LOCK_TIMEOUT_ENV),
        ("statement_timeout", STATEMENT_TIMEOUT_ENV),
    ):
        if name not in options:
            options = f"{options} -c {name}={round(setting(variable) * 1000)}".strip()
    params["options"] = options
    params.setdefault("application_name", APPLICATION)
    return params


def connect(database_url: str, **kwargs: Any) -> psycopg.Connection:
    """`psycopg.connect` with `connection_params`; a failure is one DatabaseError line."""
    params = connection_params(database_url)
    try:
        return psycopg.connect(**{**params, **kwargs})
    except psycopg.OperationalError as exc:
        message = first_line(exc)
        if params.get("password"):
            message = message.replace(params["password"], "***")
        raise DatabaseError(
            f"PostgreSQL at {describe(database_url)}: could not connect: {message}"
        ) from None


def usable(conn: psycopg.Connection) -> bool:
    """False once the connection is closed or lost: a `finally` that would only give back a
    session's locks or claims skips them (PostgreSQL dropped them with the session), so the
    error that ended the session is the one reported, not "the connection is closed"."""
    return not conn.closed and not conn.broken


_WAITING = """
    SELECT w.locktype, coalesce(w.relation, t.relation)::regclass::text, pg_blocking_pids(%s)
    FROM pg_locks w
    LEFT JOIN pg_locks t ON t.pid = w.pid AND t.locktype = 'tuple' AND t.granted
    WHERE w.pid = %s AND NOT w.granted
    LIMIT 1
"""


class LockWatch:
    """Reports, through `on_wait`, when `conn`'s statement waits for another session's lock.

    A daemon thread looks every `interval` seconds whether `conn` is running a statement; once
    one has run that long it opens a connection of its own (only then, so quick commands cost
    no second connection) and asks pg_locks what the statement waits for. Each new wait is
    reported once; `last` keeps the latest, for the lock_timeout error.
    """

    def __init__(
        self,
        conn: psycopg.Connection,
        params: dict[str, Any],
        on_wait: Callable[[str], None],
        interval: float,
    ) -> None:
        self.conn, self.params, self.on_wait, self.interval = conn, params, on_wait, interval
        self.pid = conn.info.backend_pid
        self.last: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lock-watch", daemon=True)
        self._thread.start()

    def _busy(self) -> bool:
        # Reads libpq's status field only; safe while another thread runs the statement.
        return self.conn.info.transaction_status == TransactionStatus.ACTIVE

    def _run(self) -> None:
        watcher: psycopg.Connection | None = None
        reported = None
        busy = False
        try:
            while not self._stop.wait(self.interval):
                if not self._busy():
                    busy = False
                    continue
                if not busy:  # give a statement one interval before asking about it
                    busy = True
                    continue
                if watcher is None:
                    watcher = psycopg.connect(
                        **{**self.params, "application_name": f"{APPLICATION} lock watch"},
                        autocommit=True,
                    )
                row = watcher.execute(_WAITING, (self.pid, self.pid)).fetchone()
                # Advisory locks are collection_lock's, which says itself what it waits for.
                if row is None or not row[2] or row[0] == "advisory":
                    continue
                what = describe_wait(*row)
                if what != reported:
                    self.last = reported = what
                    self.on_wait(f"PostgreSQL: waiting for {what}")
        except psycopg.Error as exc:
            # Watching is a courtesy: the watched connection reports its own failures.
            log.debug("lock watch ended: %s", first_line(exc))
        finally:
            if watcher is not None:
                watcher.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def describe_wait(locktype: str, relation: str | None, blockers: list[int]) -> str:
    """E.g. "a lock on public.doc held by pid 123"."""
    pids = ", ".join(str(pid) for pid in blockers[:5])
    holder = f"held by pid{'s' if len(blockers) > 1 else ''} {pids}"
    if relation is None:
        return f"a {locktype} lock {holder}"
    row = "a row lock" if locktype in ("tuple", "transactionid") else "a lock"
    return f"{row} on {shorten(relation)} {holder}"


@contextmanager
def open_database(
    database_url: str, on_wait: Callable[[str], None] | None = None
) -> Iterator[psycopg.Connection]:
    """An autocommit connection (see `connect`) watched by a LockWatch; closed on exit.

    Errors leave as DatabaseError, one line: a lock_timeout names what was waited for, a lost
    connection says so (a statement after it, e.g. an unlock in a `finally`, does not hide it).
    """
    from vector_pipeline.points import apply_key_settings

    params = connection_params(database_url)
    conn = connect(database_url, autocommit=True)
    lock_timeout = setting(LOCK_TIMEOUT_ENV)
    interval = min(1.0, lock_timeout / 5) if lock_timeout else 1.0
    watch = LockWatch(conn, params, on_wait or log.warning, interval)
    try:
        apply_key_settings(conn)
        yield conn
    except psycopg.errors.LockNotAvailable:
        what = watch.last or "a lock held by another session"
        try:  # the timeout in force: the URL or PGOPTIONS may have set it
            (waited,) = conn.execute("SHOW lock_timeout").fetchone()
        except psycopg.Error:
            waited = f"{lock_timeout:g}s"
        raise DatabaseError(
            f"PostgreSQL: gave up after lock_timeout ({waited}) waiting for {what}; end that "
            f"session's transaction, or raise {LOCK_TIMEOUT_ENV} (seconds)"
        ) from None
    except psycopg.errors.QueryCanceled as exc:
        raise DatabaseError(f"PostgreSQL: statement cancelled: {first_line(exc)}") from None
    except psycopg.OperationalError as exc:
        if conn.closed or conn.broken:
            raise DatabaseError(
                f"PostgreSQL at {describe(database_url)}: the connection was lost: "
                f"{first_line(exc)}"
            ) from None
        raise
    finally:
        watch.stop()
        conn.close()
