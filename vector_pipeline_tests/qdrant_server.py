"""A scripted stand-in for a Qdrant server's REST API on 127.0.0.1, for tests of write retries.

Qdrant's local mode cannot fail for a passing reason, so retries are tested against this: a real
HTTP server that `QdrantClient(url=server.url)` talks to over sockets, answering each write with
the next scripted reply (a status code with headers, or a dropped connection) and then with
Qdrant's own success body. It speaks just enough of the protocol for point writes.

    with ScriptedQdrant() as server:
        server.script(Reply(503), Reply(503))      # the next two writes fail, then success
        ... QdrantClient(url=server.url, check_compatibility=False) ...
        assert [r.path for r in server.writes] == [...]
"""

from __future__ import annotations

import importlib.metadata
import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# What Qdrant answers to a write applied with wait=true.
COMPLETED = {"result": {"operation_id": 1, "status": "completed"}, "status": "ok", "time": 0}


@dataclass(frozen=True)
class Reply:
    """One scripted answer: an HTTP status (with headers), maybe after `delay` seconds, or
    `drop` the connection unanswered."""

    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    drop: bool = False
    delay: float = 0.0  # seconds before answering, as an overloaded server


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    body: Any = field(compare=False)


class ScriptedQdrant:
    """The server; `writes` lists every PUT/POST it received, in order, with its JSON body."""

    def __init__(self) -> None:
        self.writes: list[Request] = []
        self._replies: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def script(self, *replies: Reply) -> None:
        """Answer the next writes with `replies`, in order; later ones succeed."""
        with self._lock:
            self._replies.extend(replies)

    def __enter__(self) -> ScriptedQdrant:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def _next(self, request: Request) -> Reply:
        with self._lock:
            self.writes.append(request)
            return self._replies.popleft() if self._replies else Reply()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet test output
                pass

            def _answer(self, status: int, body: Any, headers=()) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers:
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def _write(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"null")
                reply = server._next(Request(self.command, self.path, body))
                if reply.delay:
                    time.sleep(reply.delay)  # the fault itself, not a wait for the test's sake
                if reply.drop:
                    self.close_connection = True
                    self.connection.close()  # no answer at all, as a server that died
                    return
                try:
                    if reply.status == 200:
                        self._answer(200, COMPLETED)
                    else:
                        error = {"status": {"error": f"scripted {reply.status}"}, "time": 0}
                        self._answer(reply.status, error, reply.headers)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client stopped waiting (its timeout): what is being tested

            def do_GET(self) -> None:  # the client's version check: a server of its own version
                version = importlib.metadata.version("qdrant-client")
                self._answer(200, {"title": "qdrant - vector search engine", "version": version})

            do_PUT = _write
            do_POST = _write

        return Handler
