"""A deadline and a size cap for each HTTP request to an embedding provider.

httpx's timeouts (and so the `openai` SDK's) bound each socket operation, not a request: a server
that sends one byte a second, or a 3 GiB body at full speed, is never stopped. Neither httpx nor
the SDK offers a total timeout or a body limit for synchronous clients, so this module adds both
at the one place every byte passes, the network stream below httpcore:

- every connect, read and write waits at most until the attempt's deadline, so an attempt
  (one HTTP exchange: connect, send, headers and body) never lasts longer than its `seconds`,
  however the bytes trickle; when it runs out, httpcore sees an ordinary read timeout and the
  SDK treats it as one (a retry within `max_retries`, then `APITimeoutError`);
- the bytes received in an attempt are counted and `ResponseTooLarge` is raised as soon as they
  pass the attempt's cap, so a larger body is never read whole. It is not an httpx error, so the
  SDK neither retries nor wraps it.

An attempt starts when the SDK hands a request to the transport; its cap is the one set with
`response_cap` around the call, in the same thread (the SDK's synchronous client sends and reads
in the calling thread).
"""

from __future__ import annotations

import contextlib
import ssl
import time
import urllib.request
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpcore2
import httpx2

# Room beyond the vectors for headers, the JSON around them, usage and error bodies.
RESPONSE_HEADROOM = 256 * 1024
# The longest a float can be in a JSON answer ("-1.2345678901234567e-05, "); a base64 float32 is
# 5.3 bytes, but a server may answer floats whatever was asked.
JSON_FLOAT_BYTES = 32
# Per vector: {"object": "embedding", "index": 123456, "embedding": [...]}, with spacing.
VECTOR_OVERHEAD = 128


def response_limit(inputs: int, dimensions: int) -> int:
    """Bytes an answer of `inputs` vectors of `dimensions` floats can need, with headroom."""
    return inputs * (dimensions * JSON_FLOAT_BYTES + VECTOR_OVERHEAD) + RESPONSE_HEADROOM


class ResponseTooLarge(Exception):
    """The response passed its attempt's byte cap; the rest of it was not read."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the response passed {limit:,} bytes")
        self.limit = limit


@dataclass
class _Attempt:
    deadline: float  # time.monotonic()
    max_bytes: int | None
    received: int = 0

    def remaining(self, timeout: float | None, late: type[Exception]) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise late("the request's deadline passed")
        return left if timeout is None else min(timeout, left)


_cap: ContextVar[int | None] = ContextVar("vector_pipeline_response_cap", default=None)
_attempt: ContextVar[_Attempt | None] = ContextVar("vector_pipeline_attempt", default=None)


@contextlib.contextmanager
def response_cap(max_bytes: int) -> Iterator[None]:
    """Cap the responses of the requests sent in this block, in this thread, at `max_bytes`."""
    token = _cap.set(max_bytes)
    try:
        yield
    finally:
        _cap.reset(token)


class LimitedTransport(httpx2.HTTPTransport):
    """httpx's own transport, each attempt bounded to `seconds` in all and to the cap of the
    enclosing `response_cap` in bytes received."""

    def __init__(self, seconds: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seconds = seconds
        # httpx builds its connection pool without a way to pass a network backend; the pool
        # hands its backend to every connection it opens, so wrapping it here covers them all.
        pool = self._pool
        backend = getattr(pool, "_network_backend", None)
        if not isinstance(backend, httpcore2.NetworkBackend):
            raise RuntimeError("httpcore2's connection pool changed: cannot bound requests")
        pool._network_backend = _LimitedBackend(backend)  # type: ignore[attr-defined]

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        # Set in the caller's context, so it holds while httpx reads the body after this returns.
        _attempt.set(_Attempt(deadline=time.monotonic() + self.seconds, max_bytes=_cap.get()))
        return super().handle_request(request)


def limited_http_client(base_url: str, seconds: float, **kwargs: Any) -> httpx2.Client:
    """The SDK's default client for `base_url`, its requests bounded by `LimitedTransport`.

    A client given its own transport ignores the proxy environment variables, so the proxy
    they name for `base_url` (urllib's reading of HTTP(S)_PROXY and NO_PROXY) is passed on.
    Bodies are asked for uncompressed, so the bytes counted are the bytes held.
    """
    from openai import DefaultHttpxClient

    parts = urlsplit(base_url)
    proxy = None
    if not urllib.request.proxy_bypass(parts.hostname or ""):
        proxy = urllib.request.getproxies().get(parts.scheme)
    transport = LimitedTransport(seconds, proxy=proxy)
    return DefaultHttpxClient(
        transport=transport, headers={"Accept-Encoding": "identity"}, **kwargs
    )


class _LimitedBackend(httpcore2.NetworkBackend):
    def __init__(self, inner: httpcore2.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.NetworkStream:
        timeout = _bounded(timeout, httpcore2.ConnectTimeout)
        stream = self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return _LimitedStream(stream)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore2.NetworkStream:
        timeout = _bounded(timeout, httpcore2.ConnectTimeout)
        return _LimitedStream(self._inner.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _LimitedStream(httpcore2.NetworkStream):
    def __init__(self, inner: httpcore2.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        data = self._inner.read(max_bytes, _bounded(timeout, httpcore2.ReadTimeout))
        attempt = _attempt.get()
        if attempt is not None and attempt.max_bytes is not None:
            attempt.received += len(data)
            if attempt.received > attempt.max_bytes:
                raise ResponseTooLarge(attempt.max_bytes)
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _bounded(timeout, httpcore2.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore2.NetworkStream:
        timeout = _bounded(timeout, httpcore2.ConnectTimeout)
        return _LimitedStream(self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


def _bounded(timeout: float | None, late: type[Exception]) -> float | None:
    """`timeout` cut to what is left of the current attempt (none outside an attempt)."""
    attempt = _attempt.get()
    return timeout if attempt is None else attempt.remaining(timeout, late)
