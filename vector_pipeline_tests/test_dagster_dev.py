"""End to end through a real `dagster dev` (webserver, daemon, code server, run workers) on an
instance stored in PostgreSQL: sessions inserted with plain SQL, and a UI-style launch."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from vector_pipeline.locations import QdrantLocation
from vector_pipeline.vector_store import open_qdrant
from vector_pipeline_tests.conftest import create_doc_table, marked_count, write_config
from vector_pipeline_tests.openai_server import FakeOpenAIServer

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[1]
ROWS = 60
MEMO_ROWS = 20
SENTINEL_KEY = "sk-e2e-sentinel-9f8e7d6c5b4a"
# Bounds, not sleeps: each wait polls its condition and fails with what it saw.
START_TIMEOUT = 120
RUN_TIMEOUT = 240


def wait_for(what: str, check: Callable[[], Any], timeout: float, log: Path) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-4000:] if log.exists() else ""
            pytest.fail(
                f"timed out after {timeout} s waiting for {what}\n--- dagster dev ---\n{tail}"
            )
        time.sleep(0.5)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def processes_with(marker: str) -> list[int]:
    """Pids whose environment carries `marker`: everything dagster dev started, however deep."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@dataclass
class DagsterDev:
    url: str
    schema: str
    database_url: str
    qdrant_path: str
    log: Path
    tables: list[str]

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        request = urllib.request.Request(
            f"{self.url}/graphql",
            data=json.dumps({"query": query, "variables": variables or {}}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            body = json.load(response)
        assert "errors" not in body, body
        return body["data"]

    def run_status(self, run_id: str) -> str:
        return self.graphql(
            "query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }", {"id": run_id}
        )["runOrError"]["status"]

    def session(self, session_id: int) -> dict[str, Any]:
        with (
            psycopg.connect(self.database_url) as conn,
            conn.cursor(row_factory=psycopg.rows.dict_row) as cursor,
        ):
            cursor.execute(
                sql.SQL("SELECT * FROM {} WHERE id = %s").format(
                    sql.Identifier(self.schema, "embedding_session")
                ),
                (session_id,),
            )
            return cursor.fetchone()

    def insert_session(self, columns: str, values: str) -> int:
        # Exactly what an application does: one INSERT, nothing else.
        statement = sql.SQL("INSERT INTO {} " + columns + " VALUES " + values + " RETURNING id")
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            return conn.execute(
                statement.format(sql.Identifier(self.schema, "embedding_session"))
            ).fetchone()[0]

    def wait_finished(self, session_id: int) -> dict[str, Any]:
        return wait_for(
            f"session {session_id} to finish",
            lambda: (row := self.session(session_id))["status"] in ("COMPLETED", "FAILED") and row,
            RUN_TIMEOUT,
            self.log,
        )

    def marked(self, collection: str, table: str = "doc") -> int:
        with psycopg.connect(self.database_url) as conn:
            return marked_count(conn, self.schema, collection, table=table)


@pytest.fixture(scope="module")
def dagster_dev(
    database_url: str, dagster_storage_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DagsterDev]:
    from vector_pipeline.config import load_config
    from vector_pipeline.database_setup import setup_database
    from vector_pipeline.source import connect

    root = tmp_path_factory.mktemp("dagster_dev")
    schema = f"e2e_{uuid.uuid4().hex[:10]}"
    server = FakeOpenAIServer(api_key="the-only-key-it-accepts", dimensions=8).start()
    with connect(database_url) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        create_doc_table(conn, schema, ROWS)
        # A second table, so the UI has more than one asset to show.
        names = {"memo": sql.Identifier(schema, "memo"), "doc": sql.Identifier(schema, "doc")}
        conn.execute(sql.SQL("CREATE TABLE {memo} (LIKE {doc} INCLUDING ALL)").format(**names))
        conn.execute(
            sql.SQL("INSERT INTO {memo} SELECT * FROM {doc} WHERE id <= %s").format(**names),
            (MEMO_ROWS,),
        )
        config_dir = write_config(
            root / "config",
            schema,
            extra_tables="""\
            memo:
              data_type: MEMO
              text_template: "{title}: {body}"
            """,
            extra_models=f"""\
            broken:
              provider: openai
              id: text-embedding-3-small
              dimensions: 8
              base_url: {server.url}
              max_retries: 1
              api_key: ${{VP_E2E_KEY}}
            """,
        )
        (config_dir / "orchestration.yaml").write_text(
            textwrap.dedent(
                """\
                sensors:
                  sessions_interval_seconds: 1
                  pending_rows_interval_seconds: 1
                """
            )
        )
        setup_database(conn, load_config(config_dir))

    home = root / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO_ROOT / "dagster.yaml").read_text())
    marker = f"VP_E2E_MARKER_{uuid.uuid4().hex}"
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER", "QDRANT"))},
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_URL": dagster_storage_url,
        "DATABASE_URL": database_url,
        "VECTOR_PIPELINE_CONFIG_DIR": str(config_dir),
        "QDRANT_PATH": str(root / "qdrant"),
        "VP_E2E_KEY": SENTINEL_KEY,
        marker: "1",
    }
    log = root / "dagster-dev.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dagster",
                "dev",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-w",
                str(REPO_ROOT / "workspace.yaml"),
            ],
            cwd=home,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # dagster dev ignores SIGTERM when SIGINT was ignored by its parent (see
            # shared/notes/machine-facts.md); restore the default before exec.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    dev = DagsterDev(
        url=f"http://127.0.0.1:{port}",
        schema=schema,
        database_url=database_url,
        qdrant_path=str(root / "qdrant"),
        log=log,
        tables=[table.name for table in load_config(config_dir).tables.tables],
    )
    try:

        def serving() -> bool:
            if process.poll() is not None:
                pytest.fail(f"dagster dev exited: {log.read_text(errors='replace')[-4000:]}")
            try:
                with urllib.request.urlopen(f"{dev.url}/server_info", timeout=2):
                    return True
            except OSError:
                return False

        wait_for("dagster dev to answer", serving, START_TIMEOUT, log)
        locations = wait_for(
            "the code location to load",
            lambda: [
                entry
                for entry in dev.graphql(
                    "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus "
                    "locationOrLoadError { __typename ... on PythonError { message } } } } } }"
                )["workspaceOrError"]["locationEntries"]
                if entry["loadStatus"] == "LOADED"
            ],
            START_TIMEOUT,
            log,
        )
        loaded = locations[0]["locationOrLoadError"]
        assert loaded["__typename"] == "RepositoryLocation", loaded
        yield dev
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        # Whatever dagster dev started must be gone too; kill stragglers, then insist.
        for pid in processes_with(marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_for("every dagster process to exit", lambda: not processes_with(marker), 30, log)
        server.stop()
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


def test_session_inserted_with_sql_completes(dagster_dev: DagsterDev):
    session_id = dagster_dev.insert_session("(tables)", "(ARRAY['doc'])")
    row = dagster_dev.wait_finished(session_id)
    assert row["status"] == "COMPLETED", row["error_message"]
    assert row["total_items"] == ROWS
    assert row["processed_items"] == ROWS
    assert row["progress"] == 100
    assert row["run_id"] and row["started_at"] and row["finished_at"]
    assert row["started_at"] <= row["finished_at"]
    assert dagster_dev.marked("test_det-a_hybrid") == ROWS

    run = dagster_dev.graphql(
        "query($id: ID!) { runOrError(runId: $id) { ... on Run { status tags { key value } } } }",
        {"id": row["run_id"]},
    )["runOrError"]
    assert run["status"] == "SUCCESS"
    assert {"key": "vector_pipeline/session_id", "value": str(session_id)} in run["tags"]
    # The run worker has exited, so the local-mode folder is free to open here.
    with open_qdrant(QdrantLocation(path=dagster_dev.qdrant_path)) as client:
        assert client.count("test_det-a_hybrid", exact=True).count == ROWS


def test_broken_model_session_fails_with_its_reason_and_no_secret(dagster_dev: DagsterDev):
    session_id = dagster_dev.insert_session("(model)", "('broken')")
    row = dagster_dev.wait_finished(session_id)
    assert row["status"] == "FAILED"
    assert "VP_E2E_KEY" in row["error_message"]
    assert "rejected" in row["error_message"]
    assert SENTINEL_KEY not in row["error_message"]
    assert dagster_dev.marked("test_text-embedding-3-small_hybrid") == 0

    # The key is in the run's environment, and nowhere in what it left behind: the run's
    # event log (messages, errors, metadata, tags) as Dagster serves it, or any output.
    # The step writes FAILED as it fails; the run itself ends a moment later.
    wait_for(
        "the failed run to finish",
        lambda: dagster_dev.run_status(row["run_id"]) in ("FAILURE", "SUCCESS", "CANCELED"),
        RUN_TIMEOUT,
        dagster_dev.log,
    )
    events = dagster_dev.graphql(
        "query($id: ID!) { logsForRun(runId: $id) { __typename "
        "... on EventConnection { events { __typename ... on MessageEvent { message } "
        "... on ExecutionStepFailureEvent { error { message stack causes { message stack } } } "
        "... on RunFailureEvent { error { message } } } } } "
        "runOrError(runId: $id) { ... on Run { status tags { key value } runConfigYaml } } }",
        {"id": row["run_id"]},
    )
    assert events["runOrError"]["status"] == "FAILURE"
    captured = json.dumps(events)
    assert "VP_E2E_KEY" in captured  # the failure is in there, naming the variable ...
    assert SENTINEL_KEY not in captured  # ... and never the key itself
    assert SENTINEL_KEY not in dagster_dev.log.read_text(errors="replace")


def test_unknown_table_session_fails_without_a_run(dagster_dev: DagsterDev):
    session_id = dagster_dev.insert_session("(tables)", "(ARRAY['doc', 'ghost'])")
    row = dagster_dev.wait_finished(session_id)
    assert row["status"] == "FAILED"
    assert "'ghost'" in row["error_message"]
    assert row["run_id"] is None


LAUNCH = """
mutation($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
  }
}
"""


def test_partition_materialization_launched_like_the_ui(dagster_dev: DagsterDev):
    """The mutation the UI sends for 'Materialize' on one partition of one asset."""
    params = {
        "selector": {
            "repositoryLocationName": "vector_pipeline",
            "repositoryName": "__repository__",
            "jobName": "__ASSET_JOB",
            "assetSelection": [{"path": ["doc"]}],
            "assetCheckSelection": [],
        },
        "mode": "default",
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": "det_b"}]},
    }
    launched = dagster_dev.graphql(LAUNCH, {"params": params})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]

    def finished() -> str | None:
        status = dagster_dev.run_status(run_id)
        return status if status in ("SUCCESS", "FAILURE", "CANCELED") else None

    assert wait_for(f"run {run_id}", finished, RUN_TIMEOUT, dagster_dev.log) == "SUCCESS"
    assert dagster_dev.marked("test_det-b_hybrid") == ROWS


# --- In a real browser: what an operator does in the UI ------------------------------------

# Debian's Chromium (`apt-get install chromium`, which `make test` does); Playwright never
# downloads a browser of its own here.
CHROMIUM = os.environ.get("VP_CHROMIUM", "/usr/bin/chromium")
# Screenshots land here for a person (or CI) to look at after the run.
ARTIFACTS = Path(os.environ.get("VP_TEST_ARTIFACTS", REPO_ROOT / "test-artifacts"))


@pytest.fixture
def browser_page(request: pytest.FixtureRequest) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():  # a clear failure, never a skip
        pytest.fail(
            f"no Chromium at {CHROMIUM}: install Debian's package (apt-get install chromium; "
            "make test does) or point VP_CHROMIUM at one"
        )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        # Dagster greets a new instance with a newsletter dialog, at a moment of its choosing;
        # dismiss it whenever it shows up, as a person would.
        page.add_locator_handler(
            page.get_by_role("button", name="Skip", exact=True), lambda skip: skip.click()
        )
        page.set_default_timeout(60_000)
        try:
            yield page
        finally:
            # Pass or fail, leave a picture of where the browser ended up.
            page.screenshot(path=ARTIFACTS / f"{request.node.name}-last.png")
            browser.close()


def test_operator_materializes_one_partition_from_the_ui(
    dagster_dev: DagsterDev, browser_page: Any
):
    """The whole operator story in Chromium: every table on the asset graph with its kinds,
    what is pending before anything is spent, one partition launched from the Materialize
    dialog, the run page watched until it succeeds, and its checks there to see."""
    from playwright.sync_api import expect

    page = browser_page
    table, model, collection = "memo", "det_a", "test_det-a_hybrid"
    assert table in dagster_dev.tables and len(dagster_dev.tables) > 1

    # The asset graph shows every configured table, with what it reads, writes and calls.
    page.goto(f"{dagster_dev.url}/asset-groups")
    graph = page.get_by_role("img").filter(has_text="Latest event")
    for name in dagster_dev.tables:
        expect(graph.get_by_text(name, exact=True)).to_be_visible()
    for kind in ("Postgres", "qdrant", "OpenAI"):
        expect(graph.get_by_text(kind, exact=True).first).to_be_visible()
    page.screenshot(path=ARTIFACTS / "ui-asset-graph.png")

    # The catalog leads to the table's page: its description, and the pending rows the
    # observer sensor recorded before any sync ran.
    page.get_by_role("link", name="Catalog").click()
    page.locator(f'a[href="/assets/{table}"]').first.click()
    page.wait_for_url(f"**/assets/{table}**")
    expect(
        page.get_by_text("embedded into Qdrant, one partition per embedding model")
    ).to_be_visible()
    pending = page.get_by_role("row").filter(has_text="rows_pending")
    expect(pending.get_by_role("cell", name=str(MEMO_ROWS), exact=True)).to_be_visible()

    # Materialize one partition, as the dialog offers it.
    page.get_by_role("button", name="Materialize…").click()
    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_text(f"Launch runs to materialize {table}")).to_be_visible()
    dialog.get_by_text("Select a partition or create one").click()
    page.get_by_placeholder("Filter partitions").fill(model)
    page.get_by_text(model, exact=True).first.click()
    page.keyboard.press("Escape")  # close the partition list, not the dialog
    dialog.get_by_role("button", name="Launch 1 run").click()

    # The toast links to the run; watch it there until it ends.
    page.get_by_role("link", name="View", exact=True).click()
    page.wait_for_url("**/runs/*")
    run_id = page.url.rstrip("/").rsplit("/", 1)[-1]
    outcome = page.get_by_text(re.compile(r"^(Success|Failure|Canceled)$")).first
    expect(outcome).to_be_visible(timeout=RUN_TIMEOUT * 1000)
    assert outcome.inner_text() == "Success", dagster_dev.run_status(run_id)
    # The run page names its partition, and its log shows the model's check passing.
    expect(page.get_by_text(f"partition: {model}")).to_be_visible()
    log_filter = page.get_by_placeholder("Filter…")
    log_filter.fill(f"step:{table}_{model}_in_sync")
    log_filter.press("Enter")
    expect(
        page.get_by_text(f"Check {model}_in_sync succeeded for materialization of {table}.")
    ).to_be_visible()
    page.screenshot(path=ARTIFACTS / "ui-run-page.png")

    # What the browser showed is what happened: that partition of that table, and no other.
    run = dagster_dev.graphql(
        "query($id: ID!) { runOrError(runId: $id) { ... on Run { status tags { key value } "
        "assetSelection { path } } } }",
        {"id": run_id},
    )["runOrError"]
    assert run["status"] == "SUCCESS"
    assert {"key": "dagster/partition", "value": model} in run["tags"]
    assert run["assetSelection"] == [{"path": [table]}]
    assert dagster_dev.marked(collection, table) == MEMO_ROWS
    assert (ARTIFACTS / "ui-run-page.png").stat().st_size > 10_000


# --- `vector-pipeline dev` itself --------------------------------------------------------------


def dagster_project(root: Path, schema: str, *, dagster_files: bool = True) -> Path:
    """A project folder laid out like this repository: config/, dagster.yaml, workspace.yaml."""
    write_config(root / "config", schema)
    if dagster_files:
        instance = (REPO_ROOT / "dagster.yaml").read_text()
        (root / "dagster.yaml").write_text(f"# this project's instance\n{instance}")
        (root / "workspace.yaml").write_text((REPO_ROOT / "workspace.yaml").read_text())
    return root


@pytest.fixture
def dev_command(monkeypatch, tmp_path: Path, database_url: str, dagster_storage_url: str):
    """Runs `vector-pipeline ARGS` from an empty folder outside any project, up to the exec
    of dagster dev, and returns (result, what it would exec: path, argv, environment)."""
    from click.testing import CliRunner

    from vector_pipeline.cli import main

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("DAGSTER_PG_URL", dagster_storage_url)
    monkeypatch.setenv("VECTOR_PIPELINE_HOME", str(tmp_path / "state"))
    for variable in ("VECTOR_PIPELINE_CONFIG_DIR", "QDRANT_URL", "DAGSTER_HOME"):
        monkeypatch.delenv(variable, raising=False)
    execs: list[tuple[str, list[str], dict[str, str]]] = []

    class Exec(Exception):
        pass

    def execve(path: str, argv: list[str], env: dict[str, str]) -> None:
        execs.append((path, list(argv), dict(env)))
        raise Exec  # where the real one would replace this process with dagster dev

    monkeypatch.setattr(os, "execve", execve)

    def invoke(*args: str):
        result = CliRunner().invoke(main, list(args))
        if execs:
            assert isinstance(result.exception, Exec), result.output
        return result, (execs[-1] if execs else None)

    return invoke


def test_dev_from_another_directory_finds_the_projects_dagster_files(
    dev_command, tmp_path: Path, schema: str
):
    project = dagster_project(tmp_path / "project", schema)

    _, launched = dev_command("--config-dir", "../project/config", "dev", "-p", "3999")

    assert launched is not None
    path, argv, env = launched
    dagster_home = tmp_path / "state" / "dagster_home"
    workspace = str(project / "workspace.yaml")
    assert argv == [sys.executable, "-m", "dagster", "dev", "-w", workspace, "-p", "3999"]
    assert (dagster_home / "dagster.yaml").read_text().startswith("# this project's instance")
    assert env["DAGSTER_HOME"] == str(dagster_home)
    assert env["VECTOR_PIPELINE_CONFIG_DIR"] == str(project / "config")
    # What dagster dev does first, with the same files, environment and working directory:
    # load the instance from DAGSTER_HOME and the code location from the workspace.
    validated = subprocess.run(
        [path, "-m", "dagster", "definitions", "validate", "-w", workspace],
        cwd=dagster_home,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert validated.returncode == 0, validated.stdout + validated.stderr
    assert "Validation successful for code location vector_pipeline" in validated.stdout


def test_dev_without_dagster_files_says_what_is_missing(dev_command, tmp_path: Path, schema: str):
    project = dagster_project(tmp_path / "project", schema, dagster_files=False)

    result, launched = dev_command("--config-dir", str(project / "config"), "dev")

    assert launched is None
    assert result.exit_code == 1
    (message,) = result.output.splitlines()
    assert "dagster.yaml" in message and "workspace.yaml" in message
    assert str(project) in message and "--config-dir" in message
