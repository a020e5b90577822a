"""Retries for Qdrant writes that failed for a passing reason (a restart, a timeout, a 503 or 429).

Every write this pipeline makes is idempotent: upserts and vector updates under deterministic ids,
payload sets with the same values, deletes by id. Sending one again after a failure whose outcome
is unknown (a timeout after the server applied it) is therefore safe. What the server refused as
wrong (a 4xx other than 429: a bad vector size, a missing collection) is never retried.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import httpx
import tenacity
from qdrant_client.common.client_exceptions import ResourceExhaustedResponse
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from vector_pipeline.locations import positive_int, seconds
from vector_pipeline.messages import first_line

log = logging.getLogger("vector_pipeline.vector_store")  # managed in dagster.yaml's run log

ATTEMPTS_ENV = "VECTOR_PIPELINE_QDRANT_WRITE_ATTEMPTS"
FIRST_WAIT_ENV = "VECTOR_PIPELINE_QDRANT_RETRY_WAIT"
DEFAULT_ATTEMPTS = 5
DEFAULT_FIRST_WAIT = 0.5  # seconds; doubled after each failure, with jitter
MAX_WAIT = 30.0  # seconds, also the cap on a server's Retry-After

T = TypeVar("T")

_GRPC_TRANSIENT = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED"}


def is_transient(exc: BaseException) -> bool:
    """True for failures that may pass: no connection, a timeout, HTTP 5xx or 429, and their
    gRPC equivalents; False for everything else (4xx, a response that does not parse)."""
    if isinstance(exc, ResourceExhaustedResponse):
        return True
    if isinstance(exc, UnexpectedResponse):
        return exc.status_code is not None and (exc.status_code == 429 or exc.status_code >= 500)
    if isinstance(exc, ResponseHandlingException):
        # qdrant-client wraps what httpx raised; a pydantic error on a 200 is not transient.
        return isinstance(exc.source, httpx.TransportError)
    if isinstance(exc, httpx.TransportError):
        return True
    code = getattr(exc, "code", None)  # grpc.RpcError, without importing grpc for REST users
    if callable(code) and type(exc).__module__.startswith("grpc"):
        return getattr(code(), "name", None) in _GRPC_TRANSIENT
    return False


def _first_wait() -> float:
    return seconds(FIRST_WAIT_ENV, DEFAULT_FIRST_WAIT)


def _wait(first: float) -> Callable[[tenacity.RetryCallState], float]:
    backoff = tenacity.wait_exponential(multiplier=first, max=MAX_WAIT) + tenacity.wait_random(
        0, first
    )  # jitter, so writers that failed together do not come back together

    def wait(state: tenacity.RetryCallState) -> float:
        # A 429 that says when to come back is honoured, within MAX_WAIT.
        exc = state.outcome.exception() if state.outcome else None
        after = getattr(exc, "retry_after_s", None) if exc is not None else None
        return min(max(float(after or 0), backoff(state)), MAX_WAIT)

    return wait


def retry_write(what: str, write: Callable[[], T]) -> T:
    """`write()`, sent again after a transient failure (see `is_transient`), up to
    $VECTOR_PIPELINE_QDRANT_WRITE_ATTEMPTS times in all (default 5), waiting
    $VECTOR_PIPELINE_QDRANT_RETRY_WAIT seconds (default 0.5) doubled each time, at most 30 s.

    `what` names the write in the warning logged before each wait, e.g. "upsert of 128 points
    into docs". The last failure, or any failure that is not transient, is raised as it is.
    """
    attempts = positive_int(ATTEMPTS_ENV, DEFAULT_ATTEMPTS)
    first = _first_wait()

    def warn(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, ResponseHandlingException):
            exc = exc.source  # the wrapper has no message of its own
        reason = first_line(exc) if exc is not None else "?"
        code, details = getattr(exc, "code", None), getattr(exc, "details", None)
        if callable(code) and callable(details):  # gRPC: its first line says nothing useful
            reason = f"gRPC {getattr(code(), 'name', code())}: {first_line(Exception(details()))}"
        waits = state.upcoming_sleep
        log.warning(
            "Qdrant %s failed (attempt %d of %d: %s); waiting %.1f s for Qdrant to recover "
            "before sending it again",
            what,
            state.attempt_number,
            attempts,
            reason,
            waits,
        )

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(is_transient),
        stop=tenacity.stop_after_attempt(attempts),
        wait=_wait(first),
        before_sleep=warn,
        reraise=True,
    )
    return retrying(write)
