"""`vector-pipeline`: set up, seed, sync, inspect and search from a terminal.

Every command runs the same engine as the Dagster assets. Known failures (bad config, missing
key, a database that does not fit the config) print one clear message and exit non-zero, with
no traceback.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import psycopg
from psycopg.conninfo import conninfo_to_dict
from qdrant_client.http.exceptions import ApiException as QdrantError
from tqdm import tqdm

from vector_pipeline import locations
from vector_pipeline.adoption import AdoptionError
from vector_pipeline.adoption import adopt as adopt_collections
from vector_pipeline.config import (
    CONFIG_DIR_ENV,
    ConfigError,
    MissingSecretError,
    ProjectConfig,
    TableConfig,
    collection_name_for,
    load_config,
)
from vector_pipeline.database import DatabaseError, open_database
from vector_pipeline.database_setup import SetupError, setup_database
from vector_pipeline.deletes import collection_lock
from vector_pipeline.embedders import Embedder, EmbeddingError, build_embedder
from vector_pipeline.messages import first_line, shorten
from vector_pipeline.plan import DEFAULT_SAMPLE, PlanEntry
from vector_pipeline.plan import plan as plan_sync
from vector_pipeline.plan import price as _price
from vector_pipeline.reconcile import reconcile
from vector_pipeline.reconcile import repair as repair_collection
from vector_pipeline.sessions import FAILED, SessionStore
from vector_pipeline.source import SourceTable
from vector_pipeline.status import sync_status
from vector_pipeline.sync import DEFAULT_BATCH_SIZE, sync_configured_table
from vector_pipeline.vector_store import (
    CollectionMismatchError,
    ForeignPointsError,
    QdrantBusyError,
    QdrantStorageError,
    open_qdrant,
)

DEMO_QUERY = "how do I grow tomatoes in a small garden"
# What `demo` seeds: enough rows of every kind (long, Arabic, Persian, blank) to show the
# whole pipeline in a few minutes of CPU embedding; `seed-demo` seeds 600 and 400.
DEMO_ARTICLES = 100
DEMO_HADITHS = 60
_KNOWN_ERRORS = (
    ConfigError,
    MissingSecretError,
    SetupError,
    CollectionMismatchError,
    EmbeddingError,
    LookupError,
    AdoptionError,
    ForeignPointsError,
    DatabaseError,
    QdrantStorageError,
    locations.SettingError,
)


class _State:
    def __init__(self, config_dir: str | None, debug: bool = False) -> None:
        self.config_dir = config_dir
        self.debug = debug
        self._config: ProjectConfig | None = None

    @property
    def config(self) -> ProjectConfig:
        if self._config is None:
            self._config = load_config(self.config_dir)
        return self._config


pass_state = click.make_pass_decorator(_State)


def _fail_cleanly(command: Callable[..., Any], *, only_known: bool = False) -> Callable[..., Any]:
    """Any failure (with `only_known`, a known one) becomes one line naming the component
    (`--debug` keeps the traceback); every secret this process knows is blanked out of it."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        state = click.get_current_context().find_object(_State)
        try:
            return command(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.Abort, SystemExit):
            raise
        except Exception as exc:
            if (state is not None and state.debug) or (
                only_known and not isinstance(exc, _KNOWN_ERRORS)
            ):
                raise
            # Scrubbed whole, then capped per line (a message may quote user input at any
            # length): a cut never leaves part of a secret behind.
            message = _scrub(_one_line(exc), state)
            message = "\n".join(shorten(line, 1000) for line in message.splitlines())
            raise click.ClickException(message) from None

    return wrapper


def _one_line(exc: Exception) -> str:
    if isinstance(exc, _KNOWN_ERRORS):
        return str(exc)
    if isinstance(exc, psycopg.Error):
        return f"PostgreSQL: {first_line(exc)}"
    if isinstance(exc, QdrantError) or type(exc).__module__.startswith("qdrant_client"):
        return f"Qdrant: {first_line(exc)}"
    return f"{type(exc).__name__}: {first_line(exc)} (run with --debug for the traceback)"


def _scrub(message: str, state: _State | None) -> str:
    """`message` without the database password, the Qdrant key or a configured API key."""
    secrets = [os.environ.get("QDRANT_API_KEY", "")]
    for variable in ("DATABASE_URL", "DAGSTER_PG_URL"):
        with contextlib.suppress(Exception):
            secrets.append(conninfo_to_dict(os.environ.get(variable, "")).get("password", ""))
    config = state._config if state is not None else None
    if config is not None:
        for model in config.embeddings.models.values():
            reference = getattr(model, "api_key", None)
            if reference is not None:
                secrets.append(os.environ.get(reference.variable, ""))
    for secret in sorted(filter(None, secrets), key=len, reverse=True):
        if len(secret) >= 4:
            message = message.replace(secret, "***")
    return message


def _on_wait(message: str) -> None:
    tqdm.write(message, file=sys.stderr)


@contextmanager
def _database(*, start_embedded: bool = False) -> Iterator[Any]:
    # Only the demo commands may start the embedded PostgreSQL (see locations.database_url).
    url = locations.database_url(start_embedded=start_embedded)
    with open_database(url, on_wait=_on_wait) as conn:
        yield conn


def _qdrant(*, wait: bool = True) -> Any:
    return open_qdrant(locations.qdrant_location(), wait=wait, on_wait=_on_wait)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config-dir",
    envvar=CONFIG_DIR_ENV,
    type=click.Path(file_okay=False),
    help="Folder holding embeddings.yaml and tables.yaml (default: ./config).",
)
@click.option("--debug", is_flag=True, help="Show the traceback of an error.")
@click.pass_context
def main(ctx: click.Context, config_dir: str | None, debug: bool) -> None:
    """Keep Qdrant in step with PostgreSQL, incrementally."""
    ctx.obj = _State(config_dir, debug)


@main.command("init-db")
@pass_state
@_fail_cleanly
def init_db(state: _State) -> None:
    """Add embedded_in columns and reset triggers, and create embedding_session (idempotent)."""
    with _database() as conn:
        for line in setup_database(
            conn, state.config, on_wait=lambda message: click.echo(message, err=True)
        ):
            click.echo(line)
    click.echo("database ready")


@main.command("seed-demo")
@click.option("--reset", is_flag=True, help="Empty the demo tables first.")
@click.option("--articles", default=600, show_default=True)
@click.option("--hadiths", default=400, show_default=True)
@pass_state
@_fail_cleanly
def seed_demo_command(state: _State, reset: bool, articles: int, hadiths: int) -> None:
    """Create and fill the demo tables `article` and `hadith`, then run init-db."""
    from vector_pipeline.demo_data import seed_demo

    with _database(start_embedded=True) as conn:
        inserted = seed_demo(
            conn, state.config.tables.schema_, articles=articles, hadiths=hadiths, reset=reset
        )
        for table, count in inserted.items():
            click.echo(f"{table}: inserted {count} rows")
        for line in setup_database(conn, state.config):
            click.echo(line)


@main.command()
@click.option("--model", help="Model key from embeddings.yaml (default: its `default`).")
@click.option("--table", "tables", multiple=True, help="Table to sync (repeatable; default: all).")
@click.option("--batch-size", default=DEFAULT_BATCH_SIZE, show_default=True)
@pass_state
@_fail_cleanly
def sync(state: _State, model: str | None, tables: tuple[str, ...], batch_size: int) -> None:
    """Embed every pending row into the model's collection."""
    config = state.config
    key, model_config = config.embeddings.model(model)
    selected = [config.tables.table(name) for name in tables] or list(config.tables.tables)
    # The embedder is built first so a missing API key fails before any row is read.
    embedder = build_embedder(key, model_config)
    try:
        with _database() as conn, _qdrant() as qdrant:
            for table in selected:
                _sync_with_progress(config, table, embedder, conn, qdrant, batch_size)
    finally:
        embedder.close()


def _sync_with_progress(
    config: ProjectConfig,
    table: TableConfig,
    embedder: Embedder,
    conn: Any,
    qdrant: Any,
    batch_size: int,
) -> None:
    collection = collection_name_for(table.collection_base, embedder.model_id)
    pending = SourceTable.for_config(conn, config, table).pending_count(collection)
    # Shown after half a second: a sync refused at once (bad table, foreign collection)
    # prints its one-line error without an empty bar above it.
    with tqdm(
        total=pending,
        desc=f"{table.name} -> {embedder.model_key}",
        unit="row",
        file=sys.stderr,
        delay=0.5,
    ) as bar:
        try:
            result = sync_configured_table(
                conn=conn,
                qdrant=qdrant,
                embedder=embedder,
                project=config,
                table=table,
                batch_size=batch_size,
                on_batch=lambda report: bar.update(report.rows),
                log=_QuietLog(),
            )
        except BaseException:
            # Cleared, so the one-line error starts a line of its own (delay 0: a bar redrawn
            # by tqdm.write counts as never shown, and would be left).
            bar.leave, bar.delay = False, 0
            raise
    click.echo(
        f"{table.name}: embedded {result.embedded} into {result.collection} in "
        f"{result.seconds:.1f} s; skipped {result.skipped}, truncated {result.truncated}, "
        f"still pending {result.pending_after} of {result.total_rows}"
        + (
            f"; {result.chunked} long rows as chunks ({result.points_written} points)"
            if result.chunked
            else ""
        )
        + (
            f"; re-encoded {result.sparse_reencoded} sparse vectors"
            if result.sparse_reencoded
            else ""
        )
        + (f"; removed {result.deleted} deleted rows" if result.deleted else "")
        + (
            f"; rewrote the payload of {result.payloads_refreshed} rows"
            if result.payloads_refreshed
            else ""
        )
        + (
            f"; {result.adopted} already held their text (marked, not embedded)"
            if result.adopted
            else ""
        )
        + (
            f"; {result.marks_voided} marks voided: the collection is not the store they were "
            "made in"
            if result.marks_voided
            else ""
        )
    )


@main.command()
@click.option("--model", help="Model key (default: the default model).")
@click.option("--table", "tables", multiple=True, help="Table (repeatable; default: all).")
@click.option("--batch-size", default=DEFAULT_BATCH_SIZE, show_default=True)
@click.option("--dry-run", is_flag=True, help="Only report; exit 1 if anything differs.")
@pass_state
@_fail_cleanly
def repair(
    state: _State, model: str | None, tables: tuple[str, ...], batch_size: int, dry_run: bool
) -> None:
    """Compare PostgreSQL with Qdrant and fix what differs.

    Missing points (row marked, point absent) and stale points (text changed) make their rows
    pending again, orphan points (no row) are deleted, then a sync re-embeds the rows.
    """
    config = state.config
    key, model_config = config.embeddings.model(model)
    selected = [config.tables.table(name) for name in tables] or list(config.tables.tables)
    embedder = build_embedder(key, model_config)
    differs = False
    try:
        with _database() as conn, _qdrant() as qdrant:
            for table in selected:
                schema = config.tables.schema_for(table)
                collection = collection_name_for(table.collection_base, model_config.id)
                # Held throughout, so no sync of this table and collection runs in between
                # (held exclusively; the sync below takes it shared, as its holder may).
                with collection_lock(conn, schema, table, collection):
                    report = reconcile(
                        conn, qdrant, table, schema, collection, state_schema=config.tables.schema_
                    )
                    click.echo(
                        f"{table.name} -> {collection}: {report.rows} rows, {report.points} "
                        f"points; missing {report.missing_count}, orphan "
                        f"{report.orphan_count}, stale {report.stale_count}, payload drift "
                        f"{report.payload_drift_count}"
                    )
                    differs = differs or not report.ok
                    if dry_run or report.ok:
                        continue
                    fixed = repair_collection(
                        conn,
                        qdrant,
                        report,
                        table,
                        schema,
                        collection,
                        state_schema=config.tables.schema_,
                    )
                    click.echo(
                        f"{table.name}: {fixed.marked_pending} rows made pending, "
                        f"{fixed.payloads_refreshed} payloads rewritten, "
                        f"{fixed.orphans_deleted} orphan points deleted"
                        + (
                            f", {fixed.orphans_kept} kept (their row exists again)"
                            if fixed.orphans_kept
                            else ""
                        )
                    )
                    _sync_with_progress(config, table, embedder, conn, qdrant, batch_size)
    finally:
        embedder.close()
    if dry_run and differs:
        raise SystemExit(1)


@main.command()
@click.option("--model", help="Model key whose collections to adopt (default: the default model).")
@click.option("--table", "tables", multiple=True, help="Table (repeatable; default: all).")
@click.option("--dry-run", is_flag=True, help="Only report what it would do and cost.")
@click.option("--json", "as_json", is_flag=True, help="Print the reports as JSON.")
@pass_state
@_fail_cleanly
def adopt(
    state: _State, model: str | None, tables: tuple[str, ...], dry_run: bool, as_json: bool
) -> None:
    """Take over a collection another writer filled (the reference design through Agno).

    Each point is traced to its row and moved to the row's formula id with its own vectors,
    in this pipeline's payload layout; nothing is embedded. Rows whose point holds their
    current text are marked; the rest are left for the next sync, whose cost is printed.
    Idempotent: run it again after a crash.
    """
    config = state.config
    logger = _EchoLog(quiet=as_json)
    with _database() as conn, _qdrant() as qdrant:
        reports = adopt_collections(
            conn, qdrant, config, model, list(tables), dry_run=dry_run, logger=logger
        )
    if as_json:
        click.echo(json.dumps([report.as_dict() for report in reports], indent=2))
        return
    for report in reports:
        verb = "would write" if dry_run else "wrote"
        click.echo(
            f"{report.collection}: {report.points_scanned} points read, {verb} "
            f"{report.points_written} in {report.seconds:.1f} s, "
            f"{report.unattributed} left as unattributed; IDF modifier {report.idf}"
        )
        lines = [
            (
                t.table,
                str(t.points_moved),
                str(t.payloads_rewritten),
                str(t.points_in_place),
                str(t.duplicates_deleted + t.gone_deleted),
                str(t.rows_held),
                str(t.rows_to_embed),
                f"{t.stale}/{t.chunked}/{t.without_point}",
                f"{t.tokens:,}" + ("" if t.tokens_exact else " ~"),
                _money(t.cost),
            )
            for t in report.tables
        ]
        _print_table(
            (
                "table",
                "moved",
                "rewritten",
                "in place",
                "deleted",
                "kept",
                "to embed",
                "stale/chunked/no point",
                "tokens",
                "cost",
            ),
            lines,
            range(1, 10),
        )


class _EchoLog:
    """Adoption's findings, each one line on stderr (stdout stays the report)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def info(self, msg: str, *args: Any) -> None:
        if not self.quiet:
            click.echo(msg % args if args else msg, err=True)

    def warning(self, msg: str, *args: Any) -> None:
        click.echo("warning: " + (msg % args if args else msg), err=True)


class _QuietLog:
    """Per-batch lines would fight the progress bar; warnings still reach the terminal."""

    def info(self, msg: str, *args: Any) -> None:
        pass

    def warning(self, msg: str, *args: Any) -> None:
        tqdm.write("warning: " + (msg % args), file=sys.stderr)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
@click.option("--model", "models", multiple=True, help="Only this model (repeatable).")
@pass_state
@_fail_cleanly
def status(state: _State, as_json: bool, models: tuple[str, ...]) -> None:
    """Per table and model: total, embedded, pending and skipped rows, and which collection
    each active alias serves (readers query the alias)."""
    with _database() as conn, contextlib.ExitStack() as stack:
        qdrant, busy = _qdrant_unless_busy(stack)
        rows = sync_status(conn, state.config, models=list(models) or None, qdrant=qdrant)
    if as_json:
        click.echo(json.dumps([row.as_dict() for row in rows], indent=2))
        return
    _print_table(
        ("table", "model", "collection", "total", "embedded", "pending", "skipped", "alias"),
        [
            (
                r.table,
                r.model,
                r.collection,
                *map(str, (r.total, r.embedded, r.pending, r.skipped)),
                (r.alias or "") if r.alias_serves_this else "",
            )
            for r in rows
        ],
        numeric=range(3, 7),
    )
    for table, problems in dict((r.table, r.trigger_problems) for r in rows).items():
        if problems:
            click.echo(
                f"{table}: {'; '.join(problems)}: syncs refuse to run; run "
                "`vector-pipeline init-db`"
            )
    for r in rows:
        if r.verified is False and r.embedded:
            click.echo(
                f"{r.table} -> {r.collection}: the {r.embedded} embedded rows were marked in "
                "another Qdrant store (the collection was recreated, replaced or restored); the "
                "next sync re-checks them and embeds only what this store lacks"
            )
    if busy:
        click.echo(f"aliases not shown: {busy} (a sync is running)")


@main.command()
@click.option(
    "--model", "models", multiple=True, help="Model key (repeatable; default: the default)."
)
@click.option("--table", "tables", multiple=True, help="Only this table (repeatable).")
@click.option(
    "--sample",
    default=DEFAULT_SAMPLE,
    show_default=True,
    help="Pending rows read per table to count tokens; beyond it the count is scaled.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
@pass_state
@_fail_cleanly
def plan(
    state: _State, models: tuple[str, ...], tables: tuple[str, ...], sample: int, as_json: bool
) -> None:
    """What a sync would embed and cost, before any request is sent.

    Per table: the pending rows, the tokens they hold (the provider's tokenizer; cut at the
    model's input limit) and, for a model with `price_per_million_tokens`, the cost.
    """
    config = state.config
    for name in tables:
        config.tables.table(name)  # an unknown table is an error, not an empty plan
    with _database() as conn, contextlib.ExitStack() as stack:
        qdrant, busy = _qdrant_unless_busy(stack)
        entries = plan_sync(conn, config, list(models), list(tables), sample=sample, qdrant=qdrant)
    if as_json:
        click.echo(json.dumps([entry.as_dict() for entry in entries], indent=2))
        return
    rows = [(e.table, e.model, e.pending, e.tokens, e.exact, e.cost) for e in entries]
    by_model: dict[str, list[PlanEntry]] = {}
    for e in entries:
        by_model.setdefault(e.model, []).append(e)
    for model, group in by_model.items():
        costs = [e.cost for e in group]
        total = None if None in costs else sum(c for c in costs if c is not None)
        rows.append(
            (
                "total",
                model,
                sum(e.pending for e in group),
                sum(e.tokens for e in group),
                all(e.exact for e in group),
                total,
            )
        )
    _print_table(
        ("table", "model", "pending", "tokens", "cost"),
        [
            (table, model, f"{pending:,}", f"{'' if exact else '~'}{tokens:,}", _money(cost))
            for table, model, pending, tokens, exact, cost in rows
        ],
        numeric=range(2, 5),
    )
    for model, group in by_model.items():
        first = group[0]
        price = (
            f"${first.price_per_million_tokens:g} per 1M tokens"
            if first.price_per_million_tokens is not None
            else "no price_per_million_tokens in embeddings.yaml"
        )
        click.echo(f"{model}: tokens counted with {first.tokenizer}; {price}")
    if not all(e.exact for e in entries):
        click.echo(
            "~ : scaled from the first --sample pending rows, or an upper bound where the "
            "provider's tokenizer is not available offline"
        )
    for e in entries:
        if e.already_current:
            click.echo(
                f"{e.table} -> {e.collection}: {e.already_current:,} of the pending rows read "
                "already have a point holding their text; they are marked without being sent "
                "and are not counted above"
            )
    if busy:
        click.echo(f"points not looked up: {busy} (a sync is running); every row is counted")


def _qdrant_unless_busy(stack: contextlib.ExitStack) -> tuple[Any, str | None]:
    """A Qdrant client held open by `stack`, or (None, why) while a sync holds the local-mode
    folder: a read-only command answers at once with what PostgreSQL alone can tell."""
    try:
        return stack.enter_context(_qdrant(wait=False)), None
    except QdrantBusyError as exc:
        return None, str(exc)


def _print_table(header: tuple[str, ...], lines: list[tuple[str, ...]], numeric: range) -> None:
    """Columns padded to their widest cell; the `numeric` columns right-aligned."""
    cells = [header, *lines]
    widths = [max(len(line[i]) for line in cells) for i in range(len(header))]
    for line in cells:
        padded = (
            cell.rjust(width) if i in numeric else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        )
        click.echo("  ".join(padded).rstrip())


def _money(cost: float | None) -> str:
    if cost is None:
        return "unpriced"
    return f"${cost:,.4f}" if cost < 1 else f"${cost:,.2f}"


@main.command()
@click.option("--table", "tables", multiple=True, help="Only this table (repeatable).")
@click.option("--model", help="Only this model's collection.")
@pass_state
@_fail_cleanly
def skipped(state: _State, tables: tuple[str, ...], model: str | None) -> None:
    """Rows a sync skipped, with why; each is retried once its text changes."""
    config = state.config
    selected = [config.tables.table(name) for name in tables] or list(config.tables.tables)
    with _database() as conn:
        for table in selected:
            collection = None
            if model:
                _, model_config = config.embeddings.model(model)
                collection = collection_name_for(table.collection_base, model_config.id)
            for where, key, reason, when in SourceTable.for_config(
                conn, config, table
            ).skipped_rows(collection):
                click.echo(f"{table.name}\t{key}\t{where}\t{when:%Y-%m-%d %H:%M:%S}\t{reason}")


@main.command()
@click.argument("text")
@click.option("--model", help="Model key (default: the default model).")
@click.option("--limit", default=5, show_default=True, type=click.IntRange(min=1))
@click.option("--table", "tables", multiple=True, help="Only this table (repeatable).")
@click.option(
    "--where",
    "where",
    multiple=True,
    metavar="FIELD=VALUE",
    help="Payload filter, e.g. collection=bukhari (a payload column; repeatable, all must hold).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON document with every hit.")
@pass_state
@_fail_cleanly
def search(
    state: _State,
    text: str,
    model: str | None,
    limit: int,
    tables: tuple[str, ...],
    where: tuple[str, ...],
    as_json: bool,
) -> None:
    """Hybrid (dense + BM25, RRF) search; prints the top rows, each row once."""
    from vector_pipeline.search import search_rows

    config = state.config
    key, model_config = config.embeddings.model(model)
    selected = [config.tables.table(name) for name in tables] or list(config.tables.tables)
    filters = {}
    for item in where:
        field, sep, value = item.partition("=")
        if not sep or not field:
            raise click.BadParameter(f"{item!r} is not FIELD=VALUE", param_hint="--where")
        filters[field] = value
    collections = sorted(
        {collection_name_for(t.collection_base, model_config.id) for t in selected}
    )
    embedder = build_embedder(key, model_config)
    found: list[dict[str, Any]] = []
    try:
        with _qdrant() as qdrant:
            for collection in collections:
                rows = search_rows(
                    qdrant,
                    embedder,
                    collection,
                    text,
                    limit,
                    sparse=model_config.sparse.settings(),
                    tables=[t.name for t in selected] if tables else (),
                    where=filters,
                )
                if as_json:
                    found.extend(row.as_json(collection) for row in rows)
                    continue
                click.echo(f"{collection}: {text!r}")
                for row in rows:
                    meta = row.payload.get("meta_data") or {}
                    chunk = f" (chunk {meta['chunk']})" if meta.get("chunk") else ""
                    snippet = " ".join(str(row.payload.get("content", "")).split())[:110]
                    click.echo(
                        f"{row.rank:>2}. {row.score:.3f}  {meta.get('data_type')} "
                        f"{row.row_id}{chunk}  {row.payload.get('name')}\n      {snippet}"
                    )
    finally:
        embedder.close()
    if as_json:
        click.echo(json.dumps({"query": text, "model": key, "hits": found}, ensure_ascii=False))


@main.group()
def session() -> None:
    """Ask Dagster for a sync through embedding_session, and watch it."""


def _finite(param: click.Parameter, value: float | None) -> float | None:
    # FloatRange lets nan through (every comparison with it is false) and inf.
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a finite number", param=param)
    return value


@session.command("create")
@click.option("--model", help="Model key (default: the default model when the run starts).")
@click.option("--table", "tables", multiple=True, help="Table (repeatable; default: all).")
@click.option(
    "--token-budget", type=click.IntRange(min=1), help="Stop before spending more tokens."
)
@click.option(
    "--cost-budget",
    type=click.FloatRange(min=0, min_open=True),
    callback=lambda _ctx, param, value: _finite(param, value),
    help="Stop before spending more US dollars (needs the model's price_per_million_tokens).",
)
@pass_state
@_fail_cleanly
def session_create(
    state: _State,
    model: str | None,
    tables: tuple[str, ...],
    token_budget: int | None,
    cost_budget: float | None,
) -> None:
    """Insert a PENDING session and print its id.

    With a budget, the run stops before the batch that would exceed it: the session ends
    FAILED with 'budget exceeded' and the rows embedded so far stay done (see `plan`).
    """
    config = state.config
    # Checked here for a quick answer; the sensor checks again, since any app may insert rows.
    key, model_config = config.embeddings.model(model)
    if cost_budget and _price(model_config) is None:
        raise click.UsageError(
            f"--cost-budget needs a price: add price_per_million_tokens to model {key!r} in "
            "config/embeddings.yaml, or use --token-budget"
        )
    for name in tables:
        config.tables.table(name)
    with _database() as conn:
        store = SessionStore(conn, config.tables.schema_)
        click.echo(
            store.create(model, list(tables), token_budget=token_budget, cost_budget=cost_budget)
        )


@session.command("watch")
@click.argument("session_id", type=int)
@click.option("--interval", default=0.5, show_default=True, help="Seconds between polls.")
@pass_state
@_fail_cleanly
def session_watch(state: _State, session_id: int, interval: float) -> None:
    """Show a session's progress until it is COMPLETED (exit 0) or FAILED (exit 1)."""
    with _database() as conn:
        store = SessionStore(conn, state.config.tables.schema_)
        current = store.get(session_id)
        if current is None:
            raise click.ClickException(f"no embedding_session with id {session_id}")
        with tqdm(total=max(current.total_items, 1), unit="row", file=sys.stderr) as bar:
            shown = None
            while True:
                state_now = (current.status, current.total_items, current.processed_items)
                if state_now != shown:  # redraw on change only: logs stay readable without a TTY
                    bar.set_description(f"session {session_id} {current.status}")
                    bar.total = max(current.total_items, 1)
                    bar.n = current.processed_items
                    bar.refresh()
                    shown = state_now
                if current.finished:
                    break
                time.sleep(interval)
                current = store.get(session_id) or current
    if current.status == FAILED:
        raise click.ClickException(f"session {session_id} FAILED: {current.error_message}")
    click.echo(
        f"session {session_id} COMPLETED: {current.processed_items} of "
        f"{current.total_items} rows processed (run {current.run_id})"
    )


@main.command()
@click.option("--query", default=DEMO_QUERY, show_default=True)
@click.option("--articles", default=DEMO_ARTICLES, show_default=True, help="Demo articles to seed.")
@click.option("--hadiths", default=DEMO_HADITHS, show_default=True, help="Demo hadith to seed.")
@click.pass_context
def demo(ctx: click.Context, query: str, articles: int, hadiths: int) -> None:
    """Seed the demo tables, sync them with the default model, and search once."""
    ctx.invoke(seed_demo_command, articles=articles, hadiths=hadiths)
    ctx.invoke(sync)
    ctx.invoke(status)
    ctx.invoke(search, text=query)


@main.command(
    # -h belongs to dagster dev (its host option), so only --help is ours here.
    context_settings={
        "ignore_unknown_options": True,
        "allow_extra_args": True,
        "help_option_names": ["--help"],
    },
)
@click.argument("dagster_args", nargs=-1, type=click.UNPROCESSED)
@pass_state
@functools.partial(_fail_cleanly, only_known=True)  # what exec itself raises stays as it is
def dev(state: _State, dagster_args: tuple[str, ...]) -> None:
    """Start `dagster dev` on the embedded defaults (extra arguments go to dagster dev)."""
    config = state.config
    project_root = _dagster_project_root(config)
    home = locations.state_dir()
    dagster_home = home / "dagster_home"
    dagster_home.mkdir(parents=True, exist_ok=True)
    # DAGSTER_HOME must hold dagster.yaml; copy the project's so there is one file to edit.
    shutil.copyfile(project_root / "dagster.yaml", dagster_home / "dagster.yaml")
    database_url = locations.database_url(start_embedded=True)
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "DAGSTER_PG_URL": locations.dagster_storage_url(database_url),
        "DAGSTER_HOME": str(dagster_home),
        locations.STATE_DIR_ENV: str(home),
        CONFIG_DIR_ENV: str(config.config_dir.resolve()),
    }
    if not os.environ.get("QDRANT_URL"):
        env["QDRANT_PATH"] = locations.qdrant_location().path or ""
    workspace = project_root / "workspace.yaml"
    command = [sys.executable, "-m", "dagster", "dev", "-w", str(workspace), *dagster_args]
    click.echo(f"starting dagster dev -w {workspace} with DAGSTER_HOME={dagster_home}")
    # Run from DAGSTER_HOME: dagster dev warns about a dagster.yaml in its working directory
    # that is not DAGSTER_HOME's; workspace.yaml resolves the code location's own directory.
    os.chdir(dagster_home)
    os.execve(sys.executable, command, env)


DAGSTER_FILES = ("dagster.yaml", "workspace.yaml")


def _dagster_project_root(config: ProjectConfig) -> Path:
    """The folder holding the project's dagster.yaml and workspace.yaml: the config folder's
    parent (the project root, however the config folder was found), else the working
    directory, so `dev` works from anywhere `--config-dir` or its variable points home."""
    candidates = dict.fromkeys([config.config_dir.resolve().parent, Path.cwd().resolve()])
    for folder in candidates:
        if all((folder / name).is_file() for name in DAGSTER_FILES):
            return folder
    looked = " or ".join(
        f"{folder} (no {', '.join(n for n in DAGSTER_FILES if not (folder / n).is_file())})"
        for folder in candidates
    )
    raise click.ClickException(
        f"dev needs the project's dagster.yaml and workspace.yaml, not found in {looked}: run "
        f"it from the project root, or point --config-dir (or ${CONFIG_DIR_ENV}) at the "
        "project's config folder, whose parent holds them"
    )


@main.command("stop-db")
def stop_db() -> None:
    """Stop the embedded PostgreSQL server, if it runs (its data stays)."""
    stopped = locations.stop_embedded_database()
    click.echo("embedded PostgreSQL stopped" if stopped else "no embedded PostgreSQL running")


if __name__ == "__main__":
    main()
