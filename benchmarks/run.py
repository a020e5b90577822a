"""Benchmark the sync engine (parts a-g), print a results table and write BENCHMARKS.md.

    make bench                                  # the full run (~12 minutes on 2 cores)
    python -m benchmarks.run --quick            # a smoke run with small sizes (~1-2 minutes)
    python -m benchmarks.run --only a,e         # some parts; any size can be overridden

Data goes into a throwaway schema of the PostgreSQL at $BENCH_DATABASE_URL (else
$TEST_DATABASE_URL, else postgresql://postgres@127.0.0.1:5432/test), dropped at the end;
Qdrant runs in local mode in a temp folder, in `:memory:`, or is replaced by a discarding
sink, as each row of the table says. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import platform
import shlex
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import psycopg

from benchmarks import parts
from benchmarks.common import (
    API_KEY,
    API_KEY_VARIABLE,
    REPO_ROOT,
    Result,
    Workspace,
    database_url,
    engine_supports,
    quiet_engine_logs,
)
from benchmarks.fake_api import FakeApiProcess

PARTS = "abcdefgh"
TITLES = {
    "a": "End-to-end throughput against the reference design's row-at-a-time loop",
    "b": "Efficiency against the pipeline's own limit (each stage alone)",
    "c": "Nothing pending, and k pending, among a million rows",
    "d": "Peak RSS: 100k rows against 1M rows",
    "e": "API-bound throughput with N requests in flight",
    "f": "Incremental cost after editing 1% of the rows",
    "g": "Scale-out: 1, 2 and 4 workers sharing one table and model",
    "h": "A text_template change: only changed texts are embedded; O(1) detection",
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: a ~1-minute smoke run")
    parser.add_argument("--only", default=PARTS, help="parts to run, e.g. a,c,f")
    parser.add_argument(
        "--output",
        help="where to write the report (default: BENCHMARKS.md at the repo root; with "
        "--quick, nothing unless given)",
    )
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    parser.add_argument("--database-url", default=None, help="default: see the module docstring")
    defaults = parts.Sizes()
    for field in dataclasses.fields(parts.Sizes):
        value = getattr(defaults, field.name)
        flag = "--" + field.name.replace("_", "-")
        shown = ",".join(map(str, value)) if isinstance(value, tuple) else value
        parser.add_argument(flag, default=None, help=f"(full run: {shown})")
    return parser.parse_args(argv)


def sizes_from(args: argparse.Namespace) -> parts.Sizes:
    sizes = parts.Sizes.quick() if args.quick else parts.Sizes()
    for field in dataclasses.fields(parts.Sizes):
        given = getattr(args, field.name)
        if given is None:
            continue
        current = getattr(sizes, field.name)
        if isinstance(current, tuple):
            items = [item.strip() for item in given.split(",") if item.strip()]
            value: Any = tuple(int(item) if item.isdigit() else item for item in items)
        elif field.name in ("api_latency", "edit_percent"):
            value = float(given)
        elif field.name == "a_concurrency":
            value = int(given) if given not in ("", "none", "default") else None
        else:
            value = int(given.replace("_", ""))
        setattr(sizes, field.name, value)
    return sizes


# -- the environment ---------------------------------------------------------------------------


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def machine() -> list[tuple[str, str]]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in _read("/proc/cpuinfo").splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    memory = next(
        (
            f"{int(line.split()[1]) / 2**20:.1f} GiB"
            for line in _read("/proc/meminfo").splitlines()
            if line.startswith("MemTotal:")
        ),
        "unknown",
    )
    try:
        nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    except OSError:
        nproc = str(os.cpu_count())
    return [
        ("CPUs (nproc)", nproc),
        ("CPU model", cpu),
        ("Memory", memory),
        ("OS", f"{platform.system()} {platform.release()} ({platform.machine()})"),
    ]


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def versions(url: str) -> list[tuple[str, str]]:
    with psycopg.connect(url) as conn:
        postgres = conn.execute("SHOW server_version").fetchone()[0]
    try:
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        commit = "unknown"
    return [
        ("vector_pipeline", f"{_version('vector_pipeline')} (git {commit or 'unknown'})"),
        ("Python", platform.python_version()),
        ("PostgreSQL", postgres),
        ("qdrant-client", _version("qdrant-client")),
        ("dagster", _version("dagster")),
        ("openai", _version("openai")),
        ("psycopg", _version("psycopg")),
        ("onnxruntime", _version("onnxruntime")),
        ("numpy", _version("numpy")),
    ]


def command_line(argv: list[str]) -> str:
    command = "python -m benchmarks.run" + "".join(" " + shlex.quote(a) for a in argv)
    if os.environ.get("MAKELEVEL"):
        return f"make bench  (runs: {command})"
    return command


# -- the report --------------------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _met(result: Result) -> str:
    return {True: "yes", False: "**NO**", None: "-"}[result.met]


def table(results: list[Result]) -> str:
    lines = [
        "| | Measurement | Setup | Target | Measured | Met |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        cells = (r.part, r.name, r.setup, r.target, r.measured, _met(r))
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


def missed(results: list[Result]) -> list[str]:
    return [
        f"- ({r.part}) {r.name}: target {r.target}; measured {r.measured}"
        + (f". **Missed by: {r.miss}.**" if r.miss else ".")
        for r in results
        if r.met is False
    ]


def report(
    results: list[Result],
    *,
    argv: list[str],
    url: str,
    sizes: parts.Sizes,
    started: dt.datetime,
    seconds: float,
    selected: str,
) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`benchmarks/run.py`); see `benchmarks/README.md` for how each",
        "number is measured. Every comparison below ran side by side in this one run, on the",
        "same PostgreSQL, the same Qdrant mode and the same embedder.",
        "",
        f"- Date: {started.strftime('%Y-%m-%d %H:%M UTC')} (run took {seconds / 60:.1f} min)",
        f"- Command: `{command_line(argv)}`",
        f"- Parts: {', '.join(selected)}"
        + ("" if not argv or "--quick" not in argv else " (quick sizes: a smoke run)"),
        "",
        "## Machine",
        "",
        *[f"- {name}: {value}" for name, value in machine()],
        "",
        "## Versions",
        "",
        *[f"- {name}: {value}" for name, value in versions(url)],
        "- Engine config fields present: "
        + ", ".join(
            f"`{name}` {'yes' if engine_supports(name) else 'no'}"
            for name in ("max_concurrent_requests", "requests_per_minute", "tokens_per_minute")
        ),
        "",
        "## Results",
        "",
        table(results),
        "",
        "## Targets missed",
        "",
        *(missed(results) or ["None."]),
        "",
    ]
    notes = [(r, note) for r in results for note in r.notes]
    if notes:
        lines += ["## Notes", "", *[f"- ({r.part}) {r.name}: {note}" for r, note in notes], ""]
    lines += [
        "## Sizes",
        "",
        ", ".join(
            f"{field.name}={getattr(sizes, field.name)}" for field in dataclasses.fields(sizes)
        ),
        "",
    ]
    return "\n".join(lines)


# -- main --------------------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    sizes = sizes_from(args)
    selected = "".join(p for p in PARTS if p in args.only.replace(",", "").lower())
    url = args.database_url or database_url()
    os.environ[API_KEY_VARIABLE] = API_KEY
    quiet_engine_logs()
    warnings.filterwarnings("ignore", message="Local mode is not recommended")
    warnings.filterwarnings("ignore", message="Payload indexes have no effect")

    started_at = dt.datetime.now(dt.UTC)
    started = time.perf_counter()
    results: list[Result] = []
    api: FakeApiProcess | None = None
    try:
        with Workspace(url) as ws:
            log(f"schema {ws.schema} in {url.rsplit('@', 1)[-1]}; temp folder {ws.tmp}")
            if {"a", "e", "g"} & set(selected):
                api = FakeApiProcess(
                    api_key=API_KEY, latency=sizes.api_latency, dimensions=sizes.api_dimensions
                )
            runners: dict[str, Callable[[], list[Result]]] = {
                "a": lambda: parts.part_a(ws, sizes, api),
                "b": lambda: parts.part_b(ws, sizes),
                "c": lambda: parts.part_c(ws, sizes),
                "d": lambda: parts.part_d(ws, sizes),
                "e": lambda: parts.part_e(ws, sizes, api),
                "f": lambda: parts.part_f(ws, sizes),
                "g": lambda: parts.part_g(ws, sizes, api),
                "h": lambda: parts.part_h(ws, sizes),
            }
            for part in selected:
                log(f"({part}) {TITLES[part]} ...")
                part_started = time.perf_counter()
                try:
                    got = runners[part]()
                except Exception as exc:
                    traceback.print_exc()
                    got = [
                        Result(
                            part, TITLES[part], "-", "-", f"error: {exc!r}"[:300], False, "error"
                        )
                    ]
                results.extend(got)
                log(f"({part}) done in {time.perf_counter() - part_started:.0f} s")
                for r in got:
                    log(f"    {r.name}: {r.measured} [{_met(r)}]")
    finally:
        if api is not None:
            api.close()
    seconds = time.perf_counter() - started

    print(table(results))
    misses = missed(results)
    print("\nTargets missed:" if misses else "\nEvery target met.")
    for line in misses:
        print(line)
    print(f"\nTotal: {seconds / 60:.1f} min")

    output = None if args.no_write else args.output
    if output is None and not args.quick and not args.no_write:
        output = str(REPO_ROOT / "BENCHMARKS.md")
    if output:
        text = report(
            results,
            argv=argv,
            url=url,
            sizes=sizes,
            started=started_at,
            seconds=seconds,
            selected=selected,
        )
        # The retrieval and adoption benchmarks own their sections: keep them.
        from benchmarks.common import kept_sections

        previous = Path(output).read_text() if Path(output).exists() else ""
        for kept in kept_sections(previous):
            text = text.rstrip("\n") + "\n\n" + kept + "\n"
        Path(output).write_text(text)
        print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
