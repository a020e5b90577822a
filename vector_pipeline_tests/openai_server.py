"""A fake of OpenAI's embeddings HTTP API on 127.0.0.1, for tests of the HTTP embedders.

It is a real server (the `openai` SDK talks to it over sockets, with its own retries, timeouts
and connection pool), so tests exercise exactly what runs against the real API. It enforces
OpenAI's request limits, so a client that would be rejected in production is rejected here too,
and it can be told to misbehave for the next N requests (status codes with headers, malformed
JSON, wrong counts or dimensions, reset connections, answers slower than the client waits), or
for every request from some point on (`fail_always`). Some inputs can be made bad for good, as a
real provider's content filter or a model bug would: every request holding them refused
(`refuse_input`), or their vectors NaN or the wrong size (`poison_input`).

    with FakeOpenAIServer(api_key="k", dimensions=8) as server:
        server.add_faults(Fault.http_status(429, headers={"Retry-After": "1"}))
        ... OpenAI(base_url=server.url, api_key="k") ...
        assert len(server.requests) == 2

        server.add_faults(None, None, Fault.reset())       # two normal answers, then a reset
        server.fail_always(Fault.http_status(500), after=3)  # 3 normal answers, then only 500s
        server.refuse_input("bad text", message="flagged")  # 400 for any request holding it
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

import numpy as np

FaultKind = Literal[
    "status",
    "malformed_json",
    "wrong_count",
    "wrong_dimension",
    "reset",
    "sleep",
    "trickle",
    "huge",
]
Poison = Literal["nan", "inf", "short"]

OPENAI_MAX_INPUTS = 2048
OPENAI_MAX_INPUT_TOKENS = 8192
OPENAI_MAX_REQUEST_TOKENS = 300_000


def count_cl100k(text: str) -> int:
    """Tokens as OpenAI counts them for text-embedding-3 (cl100k_base)."""
    import toktok

    return toktok.batch_count([text], "cl100k_base")[0]


def fake_vector(text: str, dimensions: int) -> list[float]:
    """A unit vector determined by the text alone, so tests can predict what comes back."""
    raw = hashlib.shake_256(text.encode()).digest(4 * dimensions)
    values = np.frombuffer(raw, dtype=np.uint32).astype(np.float64) / 2**32 - 0.5
    return (values / np.linalg.norm(values)).tolist()


@dataclass(frozen=True)
class Fault:
    """What the server does instead of answering normally, for one request.

    Build with the class methods; `add_faults` queues them for the next requests in order.
    """

    kind: FaultKind
    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None
    seconds: float = 0.0
    vector_delta: int = 0

    @classmethod
    def http_status(
        cls,
        status: int,
        *,
        headers: dict[str, str] | None = None,
        body: dict[str, Any] | bytes | None = None,
        message: str | None = None,
    ) -> Fault:
        """Answer `status` with `headers`; the body defaults to OpenAI's error JSON."""
        if body is None:
            body = error_body(message or f"fake error {status}", code=None)
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        return cls("status", status=status, headers=tuple((headers or {}).items()), body=raw)

    @classmethod
    def malformed_json(cls) -> Fault:
        """A 200 with `Content-Type: application/json` whose body is not JSON."""
        return cls("malformed_json")

    @classmethod
    def wrong_count(cls, delta: int = -1) -> Fault:
        """A 200 carrying `delta` more (or fewer) vectors than inputs."""
        return cls("wrong_count", vector_delta=delta)

    @classmethod
    def wrong_dimension(cls, delta: int = 1) -> Fault:
        """A 200 whose vectors are `delta` floats longer (or shorter) than asked for."""
        return cls("wrong_dimension", vector_delta=delta)

    @classmethod
    def reset(cls) -> Fault:
        """Close the socket with a TCP reset, sending no response at all."""
        return cls("reset")

    @classmethod
    def sleep(cls, seconds: float) -> Fault:
        """Wait `seconds` before answering normally (longer than a client timeout, typically)."""
        return cls("sleep", seconds=seconds)

    @classmethod
    def trickle(cls, seconds_per_byte: float) -> Fault:
        """Send the normal answer, status line and headers included, one byte every
        `seconds_per_byte`: each read gets a byte well within a per-read timeout."""
        return cls("trickle", seconds=seconds_per_byte)

    @classmethod
    def huge(cls, size: int) -> Fault:
        """A 200 declaring a JSON body of `size` bytes, sent as fast as the client reads it
        (the bytes the server got to send are in the request's `sent`)."""
        return cls("huge", vector_delta=size)


@dataclass
class RecordedRequest:
    """One request as the server saw it, and what it did about it.

    Recorded on arrival (so `requests` is in arrival order even when answers overlap); `status`
    is filled in just before the answer is written.
    """

    received_at: float  # time.monotonic() when the request line arrived
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased: HTTP header names are case-insensitive
    body: dict[str, Any] | None
    inputs: list[str]
    fault: FaultKind | None
    status: int | None = None  # stays None when the connection was reset, or while pending
    sent: int = 0  # bytes of the response written to the socket (counted for `huge` only)

    @property
    def n_inputs(self) -> int:
        return len(self.inputs)


def error_body(
    message: str,
    *,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


@dataclass
class _Settings:
    api_key: str
    dimensions: int
    latency: float
    max_inputs: int
    max_input_tokens: int
    max_request_tokens: int
    count_tokens: Callable[[str], int]
    base64: bool


class FakeOpenAIServer:
    """POST /v1/embeddings like OpenAI, on a free loopback port, in a daemon thread."""

    def __init__(
        self,
        *,
        api_key: str = "test-key",
        dimensions: int = 8,
        latency: float = 0.0,
        max_inputs: int = OPENAI_MAX_INPUTS,
        max_input_tokens: int = OPENAI_MAX_INPUT_TOKENS,
        max_request_tokens: int = OPENAI_MAX_REQUEST_TOKENS,
        count_tokens: Callable[[str], int] = count_cl100k,
        base64: bool = True,
    ) -> None:
        """`dimensions` is used when a request does not ask for a size; `latency` delays
        every answer; `count_tokens` is how the server measures inputs against its limits;
        `base64=False` answers float lists even when base64 is asked for, as some
        OpenAI-compatible servers do."""
        self.settings = _Settings(
            api_key=api_key,
            dimensions=dimensions,
            latency=latency,
            max_inputs=max_inputs,
            max_input_tokens=max_input_tokens,
            max_request_tokens=max_request_tokens,
            count_tokens=count_tokens,
            base64=base64,
        )
        self._lock = threading.Lock()
        self._faults: deque[Fault | None] = deque()
        self._always: Fault | None = None  # served once the queue is empty and `_grace` is spent
        self._grace = 0
        self._requests: list[RecordedRequest] = []
        self._in_flight = 0
        self.max_in_flight = 0  # the most requests this server was answering at once
        self._gate: threading.Barrier | None = None
        self._refused: dict[str, tuple[int, str]] = {}  # input -> status and message
        self._poisoned: dict[str, Poison] = {}
        self._closing = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> FakeOpenAIServer:
        handler = type("_BoundHandler", (_Handler,), {"fake": self})
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        httpd.daemon_threads = True
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._closing.set()  # wakes handlers sleeping in a `sleep` fault or latency
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("server is not running; call start() or use it as a context")
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        """The base URL to give the SDK (`OpenAI(base_url=...)`)."""
        return f"http://127.0.0.1:{self.port}/v1"

    # -- scripting and inspection ----------------------------------------------------------

    def add_faults(self, *faults: Fault | None) -> None:
        """Queue faults: the next request gets the first, the one after the second, ...

        A `None` is a normal answer, so `add_faults(None, None, fault)` spares two requests.
        """
        with self._lock:
            self._faults.extend(faults)

    def fail_next(self, fault: Fault, times: int = 1) -> None:
        self.add_faults(*([fault] * times))

    def fail_always(self, fault: Fault | None, *, after: int = 0) -> None:
        """Answer `after` more requests normally, then give every request `fault`, until
        `fail_always(None)` or `clear()`. Queued faults (`add_faults`) are served first; a
        request answered from the queue does not count toward `after`."""
        with self._lock:
            self._always = fault
            self._grace = after

    def refuse_input(self, text: str, *, status: int = 400, message: str | None = None) -> None:
        """Answer `status` with `message` to every request that holds `text` as an input."""
        with self._lock:
            self._refused[text] = (status, message or "Invalid 'input': content refused.")

    def poison_input(self, text: str, poison: Poison = "nan") -> None:
        """Answer `text`'s vector, wherever it is sent, with a NaN or an infinite value, or one
        value short; the other inputs' vectors stay right."""
        with self._lock:
            self._poisoned[text] = poison

    def gate(self, parties: int, timeout: float = 60.0) -> None:
        """Hold the first requests until `parties` of them are in flight at once, then answer
        them all: proof that that many clients were working together. The barrier breaks
        after `timeout` seconds, and the held requests are answered anyway."""
        with self._lock:
            self._gate = threading.Barrier(parties, action=self._open_gate, timeout=timeout)

    @property
    def pending_faults(self) -> int:
        """Queued faults not yet served (`fail_always` is not counted)."""
        with self._lock:
            return len(self._faults)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request so far, in arrival order (a copy)."""
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        """Forget the requests recorded so far (faults and bad inputs stay)."""
        with self._lock:
            self._requests.clear()

    def clear(self) -> None:
        """Forget recorded requests, queued faults, `fail_always` and bad inputs."""
        with self._lock:
            self._refused.clear()
            self._poisoned.clear()
            self._requests.clear()
            self._faults.clear()
            self._always = None
            self._grace = 0

    # -- used by the handler ---------------------------------------------------------------

    def _next_fault(self) -> Fault | None:
        with self._lock:
            if self._faults:
                return self._faults.popleft()
            if self._always is None:
                return None
            if self._grace > 0:
                self._grace -= 1
                return None
            return self._always

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _pass_gate(self) -> None:
        with self._lock:
            gate = self._gate
        if gate is None:
            return
        try:
            gate.wait()
        except threading.BrokenBarrierError:
            self._open_gate()  # timed out: the test's own assertions tell what went wrong

    def _open_gate(self) -> None:
        # Run by the last arrival before any is released, so no later request meets the gate.
        with self._lock:
            self._gate = None

    def _wait(self, seconds: float) -> None:
        if seconds > 0:
            self._closing.wait(seconds)


class _Handler(BaseHTTPRequestHandler):
    fake: FakeOpenAIServer  # set on a per-server subclass
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDK's connection pool expects

    def log_message(self, format: str, *args: Any) -> None:
        pass  # tests read `requests`, not stderr

    def do_GET(self) -> None:
        self._read_body()
        self._json(404, error_body(f"Unknown request URL: GET {self.path}."))

    def do_POST(self) -> None:
        with self.fake._lock:
            self.fake._in_flight += 1
            self.fake.max_in_flight = max(self.fake.max_in_flight, self.fake._in_flight)
        try:
            self._post()
        finally:
            with self.fake._lock:
                self.fake._in_flight -= 1

    def _post(self) -> None:
        received_at = time.monotonic()
        raw = self._read_body()
        body: dict[str, Any] | None
        try:
            parsed = json.loads(raw) if raw else None
            body = parsed if isinstance(parsed, dict) else None
        except ValueError:
            body = None
        inputs = _inputs_of(body)
        fault = self.fake._next_fault()
        record = RecordedRequest(
            received_at=received_at,
            method="POST",
            path=self.path,
            headers={name.lower(): value for name, value in self.headers.items()},
            body=body,
            inputs=inputs if isinstance(inputs, list) else [],
            fault=fault.kind if fault else None,
        )
        self.fake._record(record)
        self.fake._pass_gate()
        self.fake._wait(self.fake.settings.latency)

        if fault is not None and fault.kind == "reset":
            self._reset()
            return
        if fault is not None and fault.kind == "sleep":
            self.fake._wait(fault.seconds)
            fault = None  # then answer as usual; the client has usually given up by now
        if fault is not None and fault.kind == "status":
            record.status = fault.status
            self._send(fault.status, fault.body or b"", dict(fault.headers))
            return
        if fault is not None and fault.kind == "malformed_json":
            record.status = 200
            self._send(200, b'{"object": "list", "data": [{"embedding": [0.1,', {})
            return
        if fault is not None and fault.kind == "huge":
            record.status = 200
            self._send_huge(fault.vector_delta, record)
            return

        status, answer = self._answer(body, inputs, fault)
        record.status = status
        if fault is not None and fault.kind == "trickle":
            self._trickle(status, json.dumps(answer).encode(), fault.seconds)
            return
        self._json(status, answer)

    def _answer(
        self, body: dict[str, Any] | None, inputs: list[str] | str, fault: Fault | None
    ) -> tuple[int, dict[str, Any]]:
        """What OpenAI would answer (the status and JSON), with a data fault applied."""
        settings = self.fake.settings
        if self.path.rstrip("/") != "/v1/embeddings":
            return 404, error_body(f"Unknown request URL: POST {self.path}.")
        auth = self.headers.get("Authorization", "")
        if auth != f"Bearer {settings.api_key}":
            given = auth.removeprefix("Bearer ")
            # OpenAI echoes a masked key: enough to tell which one, never the whole key.
            masked = f"{given[:3]}***{given[-4:]}" if len(given) > 8 else "***"
            message = (
                f"Incorrect API key provided: {masked}. You can find your API key at "
                "https://platform.openai.com/account/api-keys."
            )
            return 401, error_body(message, code="invalid_api_key")
        if body is None:
            return 400, error_body("We could not parse the JSON body of your request.")
        if not isinstance(body.get("model"), str):
            return 400, error_body("you must provide a model parameter", param="model")
        if isinstance(inputs, str):
            return 400, error_body(inputs, param="input")
        with self.fake._lock:
            refused = [self.fake._refused[text] for text in inputs if text in self.fake._refused]
            poisoned = dict(self.fake._poisoned)
        if refused:
            status, message = refused[0]
            return status, error_body(message, param="input", code="content_refused")
        if len(inputs) > settings.max_inputs:
            return 400, error_body(
                f"Invalid 'input': array too long. Expected an array with maximum length "
                f"{settings.max_inputs}, but got an array with length {len(inputs)} instead.",
                param="input",
                code="array_above_max_length",
            )
        if any(text == "" for text in inputs):
            return 400, error_body(
                "'$.input' is invalid. Please check the API reference: "
                "https://platform.openai.com/docs/api-reference.",
                param="input",
            )
        counts = [settings.count_tokens(text) for text in inputs]
        longest = max(counts, default=0)
        if longest > settings.max_input_tokens:
            return 400, error_body(
                f"This model's maximum context length is {settings.max_input_tokens} tokens, "
                f"however you requested {longest} tokens ({longest} in your prompt; 0 for the "
                "completion). Please reduce your prompt; or completion length."
            )
        if sum(counts) > settings.max_request_tokens:
            return 400, error_body(
                f"Requested {sum(counts)} tokens, max {settings.max_request_tokens} tokens "
                "per request",
                code="max_tokens_per_request",
            )
        dimensions = body.get("dimensions") or settings.dimensions
        if not isinstance(dimensions, int) or dimensions < 1:
            return 400, error_body("Invalid 'dimensions'.", param="dimensions")

        vectors = [fake_vector(text, dimensions) for text in inputs]
        if fault is not None and fault.kind == "wrong_count":
            if fault.vector_delta < 0:
                vectors = vectors[: max(0, len(vectors) + fault.vector_delta)]
            else:
                extra = range(fault.vector_delta)
                vectors += [fake_vector(f"extra {i}", dimensions) for i in extra]
        if fault is not None and fault.kind == "wrong_dimension":
            size = max(1, dimensions + fault.vector_delta)
            vectors = [fake_vector(text, size) for text in inputs]
        for index, text in enumerate(inputs):
            poison = poisoned.get(text)
            if poison == "short":
                vectors[index] = vectors[index][:-1]
            elif poison is not None:
                vectors[index] = [*vectors[index][:-1], float(poison)]
        base64_wanted = self.fake.settings.base64 and body.get("encoding_format") == "base64"
        return 200, {
            "object": "list",
            "data": [
                {
                    "object": "embedding",
                    "index": index,
                    "embedding": _base64(vector) if base64_wanted else vector,
                }
                for index, vector in enumerate(vectors)
            ],
            "model": body["model"],
            "usage": {"prompt_tokens": sum(counts), "total_tokens": sum(counts)},
        }

    # -- wire helpers ----------------------------------------------------------------------

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _json(self, status: int, payload: dict[str, Any]) -> None:
        self._send(status, json.dumps(payload).encode(), {})

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (e.g. after its timeout)

    def _trickle(self, status: int, body: bytes, seconds_per_byte: float) -> None:
        head = (
            f"HTTP/1.1 {status} {self.responses[status][0]}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.close_connection = True
        for byte in head + body:
            if self.fake._closing.wait(seconds_per_byte):
                return
            try:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
            except OSError:
                return  # the client gave up

    def _send_huge(self, size: int, record: RecordedRequest) -> None:
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        opening = b'{"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": "'
        filler = b"A" * 65536
        try:
            self.wfile.write(opening)
            record.sent = len(opening)
            while record.sent < size and not self.fake._closing.is_set():
                chunk = filler[: size - record.sent]
                self.wfile.write(chunk)
                record.sent += len(chunk)
        except OSError:
            return  # the client stopped reading and closed the connection

    def _reset(self) -> None:
        # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()

    def finish(self) -> None:
        # After a reset the socket is already closed; flushing it fails, harmlessly.
        with contextlib.suppress(OSError, ValueError):
            super().finish()


def _inputs_of(body: dict[str, Any] | None) -> list[str] | str:
    """The request's inputs as a list, or a message saying why they are unusable."""
    if body is None:
        return []
    value = body.get("input")
    if isinstance(value, str):
        return [value]
    if isinstance(value, Sequence) and all(isinstance(item, str) for item in value):
        return list(value)
    return "'input' must be a string or an array of strings (token arrays are not faked)"


def _base64(vector: list[float]) -> str:
    return base64.b64encode(np.asarray(vector, dtype=np.float32).tobytes()).decode()
