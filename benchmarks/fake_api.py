"""The loopback OpenAI-compatible server the benchmarks embed against, in its own process.

It is `vector_pipeline_tests.openai_server.FakeOpenAIServer` (a real HTTP server on
127.0.0.1 that the `openai` SDK talks to over sockets) with three changes that make it fit
for measuring a client rather than itself:

- it counts requests in flight and remembers the most it ever saw at once (`GET /_bench/stats`,
  reset with `POST /_bench/reset`), so a benchmark can check the client never exceeds its
  configured concurrency;
- it answers after `latency` seconds plus almost nothing: vectors come from a pool of
  pre-encoded unit vectors (chosen by a hash of the text) instead of being hashed and
  JSON-encoded per input, which at 1,536 dimensions costs the test server more time than the
  latency itself;
- it sets TCP_NODELAY, so a small answer is not held back ~40 ms by Nagle's algorithm waiting
  for the client's delayed ACK (the headers and the body are written separately), which would
  add 40 ms to every one-row request of the reference loop.

It runs in a subprocess (`python -m benchmarks.fake_api`), so its CPU time is not spent under
the benchmarked process's GIL; the parent reads its URL from the first line of stdout.
"""

from __future__ import annotations

import argparse
import base64
import json
import signal
import socket
import sys
import threading
import urllib.request
import zlib
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from vector_pipeline_tests.openai_server import FakeOpenAIServer, _Handler, error_body

POOL = 256


@cache
def _pool(dimensions: int, base64_wanted: bool) -> tuple[bytes, ...]:
    """`POOL` fixed unit vectors of `dimensions` floats, each ready to paste into an answer: a
    JSON array, or a JSON string of base64 float32 (`encoding_format: base64`)."""
    rng = np.random.default_rng(dimensions)
    matrix = rng.standard_normal((POOL, dimensions))
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    if base64_wanted:
        return tuple(b'"%s"' % base64.b64encode(row.astype("<f4").tobytes()) for row in matrix)
    return tuple(json.dumps(row.tolist()).encode() for row in matrix)


class _BenchHandler(_Handler):
    fake: BenchOpenAIServer

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:
        if self.path == "/_bench/stats":
            self._read_body()
            self._json(200, self.fake.stats())
            return
        super().do_GET()

    def do_POST(self) -> None:
        if self.path == "/_bench/reset":
            self._read_body()
            self.fake.reset_stats()
            self._json(200, self.fake.stats())
            return
        self.fake._enter()
        try:
            self._embeddings()
        finally:
            self.fake._leave()

    def _embeddings(self) -> None:
        raw = self._read_body()
        settings = self.fake.settings
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if self.headers.get("Authorization", "") != f"Bearer {settings.api_key}":
            self._json(401, error_body("Incorrect API key provided", code="invalid_api_key"))
            return
        inputs = body.get("input") if isinstance(body, dict) else None
        if isinstance(inputs, str):
            inputs = [inputs]
        if self.path.rstrip("/") != "/v1/embeddings" or not isinstance(inputs, list):
            self._json(400, error_body("expected POST /v1/embeddings with an input list"))
            return
        self.fake._count(len(inputs))
        self.fake._wait(settings.latency)
        dimensions = body.get("dimensions") or settings.dimensions
        pool = _pool(dimensions, body.get("encoding_format") == "base64")
        items = b",".join(
            b'{"object":"embedding","index":%d,"embedding":%s}'
            % (index, pool[zlib.crc32(text.encode()) % POOL])
            for index, text in enumerate(inputs)
        )
        tokens = sum(len(text) // 4 + 1 for text in inputs)
        answer = (
            b'{"object":"list","data":[%s],"model":%s,"usage":{"prompt_tokens":%d,'
            % (
                items,
                json.dumps(str(body.get("model"))).encode(),
                tokens,
            )
            + b'"total_tokens":%d}}' % tokens
        )
        self._send(200, answer, {})


class BenchOpenAIServer(FakeOpenAIServer):
    """FakeOpenAIServer with the fast answer path and in-flight accounting described above."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._stats_lock = threading.Lock()
        self.reset_stats()

    def start(self) -> BenchOpenAIServer:
        from http.server import ThreadingHTTPServer

        handler = type("_BoundBenchHandler", (_BenchHandler,), {"fake": self})
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        httpd.daemon_threads = True
        httpd.request_queue_size = 128
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def reset_stats(self) -> None:
        with self._stats_lock:
            self._in_flight = 0
            self._max_in_flight = 0
            self._requests = 0
            self._inputs = 0

    def stats(self) -> dict[str, int]:
        with self._stats_lock:
            return {
                "in_flight": self._in_flight,
                "max_in_flight": self._max_in_flight,
                "requests": self._requests,
                "inputs": self._inputs,
            }

    def _enter(self) -> None:
        with self._stats_lock:
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)

    def _leave(self) -> None:
        with self._stats_lock:
            self._in_flight -= 1

    def _count(self, inputs: int) -> None:
        with self._stats_lock:
            self._requests += 1
            self._inputs += inputs


class FakeApiProcess:
    """`BenchOpenAIServer` in a child process; `url` for the SDK, `stats()`/`reset()` over HTTP."""

    def __init__(self, *, api_key: str, latency: float, dimensions: int) -> None:
        import subprocess

        self._process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.fake_api",
                "--api-key",
                api_key,
                "--latency",
                str(latency),
                "--dimensions",
                str(dimensions),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        assert self._process.stdout is not None
        line = self._process.stdout.readline().strip()
        if not line.startswith("http://"):
            self.close()
            raise RuntimeError(f"the fake API did not start (said {line!r})")
        self.url = line  # ends in /v1
        self._root = line.removesuffix("/v1")

    def stats(self) -> dict[str, int]:
        with urllib.request.urlopen(f"{self._root}/_bench/stats", timeout=10) as response:
            return json.loads(response.read())

    def reset(self) -> None:
        request = urllib.request.Request(f"{self._root}/_bench/reset", data=b"", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()

    def close(self) -> None:
        if self._process.poll() is None:
            assert self._process.stdin is not None
            self._process.stdin.close()  # the child exits when its stdin closes
            try:
                self._process.wait(timeout=10)
            except Exception:
                self._process.kill()
                self._process.wait()

    def __enter__(self) -> FakeApiProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--dimensions", type=int, default=1536)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = BenchOpenAIServer(
        api_key=args.api_key, latency=args.latency, dimensions=args.dimensions
    )
    server.start()
    for base64_wanted in (False, True):
        _pool(args.dimensions, base64_wanted)
    print(server.url, flush=True)
    try:
        sys.stdin.read()  # until the parent closes our stdin (or dies)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
