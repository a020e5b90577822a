"""Embeddings over HTTP from OpenAI, Jina AI, or any server that speaks OpenAI's protocol.

The official `openai` SDK does the transport and the retrying of transport faults: on
408/409/429/5xx, timeouts and connection errors it retries, waiting what `retry-after-ms` or
`Retry-After` asks for (if that is at most 120 s; a longer ask is not retried at all), else
0.5 s * 2^n capped at 8 s, minus up to 25 % jitter (openai/_base_client.py, 3.57). A 401/403 is
not retried.

This module adds what the SDK does not:

- inputs cut and packed to the provider's limits before sending (see batching.py);
- every answer checked before it is trusted, and an unusable one (not JSON, the wrong number of
  vectors, the wrong size, out of order, not finite) retried like a transport fault, with the
  same backoff (`retry_base_seconds` * 2^n capped at `retry_max_seconds`, less up to 25 %);
- one retry budget per request: the SDK's retries and ours together never exceed the model's
  `max_retries`, so a request is sent at most `max_retries + 1` times (plus, once, a re-send with
  inputs cut shorter when the server counts tokens differently);
- errors that name the model and the key's variable, never the key, and that carry no SDK
  exception (whose request object holds the `Authorization` header) as cause or context.
"""

from __future__ import annotations

import base64
import random
import re
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import openai

from vector_pipeline.config import JinaModel, OpenAIModel
from vector_pipeline.embedders.base import (
    DenseEmbeddings,
    EmbeddingAnswerError,
    EmbeddingAuthError,
    EmbeddingError,
    reject_empty,
)
from vector_pipeline.embedders.batching import (
    Cl100kCounter,
    TokenCounter,
    Utf8ByteCounter,
    plan_requests,
    prepare_inputs,
)
from vector_pipeline.embedders.rate_limit import RateLimiter

# How providers say one input is over the model's context length (OpenAI: "This model's
# maximum context length is 8192 tokens, however you requested ..."). The request-wide token
# limit is worded differently ("max 300000 tokens per request") and is not matched.
_TOO_LONG = re.compile(
    r"maximum context length|too long|too many tokens|exceeds? (?:the )?max", re.IGNORECASE
)
_MESSAGE_LIMIT = 500
# The longest Retry-After the SDK honours; a longer ask fails at once (MAX_RETRY_AFTER_DELAY).
_SDK_MAX_RETRY_AFTER = 120.0


class OpenAIEmbedder:
    """`openai` and `jinaai` models; Jina gets its `task` parameter, the rest is the same."""

    # Backoff before re-sending after an unusable answer: the SDK's own constants, so a request
    # backs off the same way whatever went wrong. Tests lower them on an instance.
    retry_base_seconds: float = 0.5
    retry_max_seconds: float = 8.0

    def __init__(
        self,
        model_key: str,
        model: OpenAIModel | JinaModel,
        api_key: str,
        *,
        counter: TokenCounter | None = None,
    ) -> None:
        self.model_key = model_key
        self.model_id = model.id
        self.dimensions = model.dimensions
        self.max_concurrent_requests = model.max_concurrent_requests
        self._model = model
        self._limiter = RateLimiter(model.requests_per_minute, model.tokens_per_minute)
        self._variable = model.api_key.variable
        self._api_key = api_key  # kept only to scrub it from error messages
        # Only OpenAI's own tokenizer is available offline; anything else is bounded by bytes.
        self._counter = counter or (
            Cl100kCounter() if model.provider == "openai" else Utf8ByteCounter()
        )
        # An input can never be larger than a whole request may be.
        self._per_input = min(model.max_tokens_per_input, model.max_tokens_per_request)
        self.max_tokens_per_input = self._per_input
        self._client = openai.OpenAI(
            api_key=api_key,
            base_url=model.base_url,
            max_retries=model.max_retries,
            timeout=model.timeout_seconds,
        )
        # Copies that share the connection pool and allow fewer SDK retries: what is left of a
        # request's budget after earlier attempts.
        self._clients: dict[int, openai.OpenAI] = {model.max_retries: self._client}

    def __repr__(self) -> str:
        return (
            f"OpenAIEmbedder(model_key={self.model_key!r}, provider={self._model.provider!r}, "
            f"model_id={self.model_id!r}, dimensions={self.dimensions})"
        )

    def embed_documents(self, texts: Sequence[str]) -> DenseEmbeddings:
        reject_empty(texts)
        if not texts:
            return DenseEmbeddings(vectors=[], truncated=(), tokens=0)
        prepared = prepare_inputs(texts, self._counter, self._per_input)
        truncated = set(prepared.truncated)
        vectors: list[list[float]] = []
        tokens = 0
        requests = plan_requests(
            prepared.counts, self._model.max_inputs_per_request, self._model.max_tokens_per_request
        )
        for span in requests:
            batch = prepared.texts[span.start : span.stop]
            counted = sum(prepared.counts[span.start : span.stop])
            got, used, shrunk = self._embed_batch(batch, counted, self._task(query=False))
            vectors.extend(got)
            tokens += used
            truncated.update(span.start + index for index in shrunk)
        return DenseEmbeddings(vectors=vectors, truncated=tuple(sorted(truncated)), tokens=tokens)

    def count_tokens(self, text: str) -> int:
        """Tokens `text` costs: exact (cl100k_base) for OpenAI, an upper bound otherwise."""
        return self._counter.count([text])[0]

    def embed_query(self, text: str) -> list[float]:
        reject_empty([text])
        prepared = prepare_inputs([text], self._counter, self._per_input)
        vectors, _used, _shrunk = self._embed_batch(
            prepared.texts, prepared.counts[0], self._task(query=True)
        )
        return vectors[0]

    def close(self) -> None:
        self._client.close()

    # -- one request -----------------------------------------------------------------------

    def _task(self, *, query: bool) -> str | None:
        if isinstance(self._model, JinaModel):
            return self._model.query_task if query else self._model.task
        return None

    def _embed_batch(
        self, batch: list[str], counted: int, task: str | None
    ) -> tuple[list[list[float]], int, list[int]]:
        """Vectors, tokens used, and indexes (within `batch`) cut after a "too long" answer.

        Errors are raised outside any `except` block, so they carry no SDK exception as context.
        """
        budget = self._model.max_retries
        retries = 0  # spent on this request so far, by the SDK and by us
        shrunk: list[int] = []
        while True:
            failure: EmbeddingError | None = None
            raw: Any = None
            try:
                self._limiter.acquire(counted)
                raw = self._create(batch, task, max_retries=budget - retries)
                self._limiter.observe(raw.headers)
            except openai.BadRequestError as exc:
                failure = self._translate(exc)
                if not shrunk and _TOO_LONG.search(_message_of(exc)):
                    # Our count disagreed with the server's (another tokenizer behind
                    # `base_url`, say). Cut the inputs that could be over by the byte bound,
                    # which holds for any byte-level tokenizer, and send once more.
                    bound = Utf8ByteCounter()
                    counts = bound.count(batch)
                    shrunk = [i for i, count in enumerate(counts) if count > self._per_input]
                    if shrunk:
                        batch = list(batch)
                        for index in shrunk:
                            batch[index] = bound.cut(batch[index], self._per_input)
                        counted = sum(bound.count(batch))
                        continue
            except openai.OpenAIError as exc:
                failure = self._translate(exc)
            if failure is not None:
                raise failure
            retries += max(0, int(getattr(raw, "retries_taken", 0) or 0))

            outcome = self._read(raw, len(batch))
            if not isinstance(outcome, EmbeddingAnswerError):
                vectors, used = outcome
                return vectors, used if used is not None else counted, shrunk
            if retries >= budget:
                raise EmbeddingAnswerError(
                    f"{outcome}; gave up after {retries + 1} attempts "
                    f"(max_retries: {budget}, shared with HTTP and connection retries)"
                )
            time.sleep(self.retry_delay(retries))
            retries += 1

    def retry_delay(self, retries: int) -> float:
        """Seconds to wait before retry `retries + 1`: the SDK's exponential backoff."""
        ceiling = min(self.retry_base_seconds * 2.0 ** min(retries, 60), self.retry_max_seconds)
        return ceiling * (1 - 0.25 * random.random())

    def _create(self, batch: list[str], task: str | None, *, max_retries: int) -> Any:
        """The raw response (its body not yet parsed) after at most `max_retries` SDK retries."""
        client = self._clients.get(max_retries)
        if client is None:
            client = self._clients[max_retries] = self._client.with_options(max_retries=max_retries)
        options: dict[str, Any] = {}
        if self._model.send_dimensions:
            options["dimensions"] = self.dimensions
        if task:
            options["extra_body"] = {"task": task}
        return client.embeddings.with_raw_response.create(
            model=self._model.id,
            input=batch,
            encoding_format=self._model.encoding_format,
            **options,
        )

    def _read(
        self, raw: Any, expected: int
    ) -> tuple[list[list[float]], int | None] | EmbeddingAnswerError:
        """Vectors and reported tokens from a raw response, or why the answer is unusable.

        The body is read as plain JSON, not through the SDK's response models: building a
        pydantic object per float costs ~2 ms per 1536-d vector under the GIL, which capped
        concurrent requests (BENCHMARKS.md, parts a and e).
        """
        try:
            body = raw.http_response.json()
        except ValueError as exc:  # json's error on a body that is not JSON
            return EmbeddingAnswerError(
                f"{self._who()} answered with a body that is not valid JSON ({exc})"
            )
        try:
            vectors = self._validate(body, expected)
        except EmbeddingAnswerError as exc:
            return exc
        usage = body.get("usage") if isinstance(body, dict) else None
        used = usage.get("total_tokens") if isinstance(usage, dict) else None
        return vectors, used if isinstance(used, int) else None

    def _validate(self, body: Any, expected: int) -> list[list[float]]:
        """The vectors in input order, or EmbeddingAnswerError if they cannot be trusted."""
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list) or len(data) != expected:
            got = len(data) if isinstance(data, list) else "no"
            raise EmbeddingAnswerError(
                f"{self._who()} returned {got} vectors for {expected} inputs; refusing to guess "
                "which vector belongs to which text"
            )
        indexes = [item.get("index") if isinstance(item, dict) else None for item in data]
        if sorted(indexes, key=lambda i: i if isinstance(i, int) else -1) != list(range(expected)):
            raise EmbeddingAnswerError(
                f"{self._who()} returned vectors with indexes {indexes[:10]}..., "
                f"not 0..{expected - 1}"
            )
        ordered = sorted(data, key=lambda item: item["index"])
        rows = [self._vector(item.get("embedding"), at) for at, item in enumerate(ordered)]
        matrix = np.vstack(rows) if rows else np.empty((0, self.dimensions))
        if not np.isfinite(matrix).all():
            raise EmbeddingAnswerError(f"{self._who()} returned NaN or infinite vector values")
        return matrix.tolist()

    def _vector(self, embedding: Any, position: int) -> np.ndarray:
        """One answer's vector: a JSON list of floats, or base64 of little-endian float32 (what
        `encoding_format: base64` asks for; a server may answer floats anyway)."""
        size: object
        vector: np.ndarray | None = None
        if isinstance(embedding, str):
            try:
                raw = base64.b64decode(embedding, validate=True)
            except ValueError:
                raise EmbeddingAnswerError(
                    f"{self._who()} returned a vector for input {position} that is neither a "
                    "list of numbers nor valid base64"
                ) from None
            if len(raw) % 4 == 0:
                vector = np.frombuffer(raw, dtype="<f4")
                size = len(vector)
            else:
                size = f"{len(raw)} bytes, not whole float32"
        elif isinstance(embedding, list):
            try:
                vector = np.asarray(embedding, dtype=np.float64)
            except (TypeError, ValueError):
                raise EmbeddingAnswerError(
                    f"{self._who()} returned non-numeric vector values"
                ) from None
            size = len(embedding)
        else:
            size = type(embedding).__name__
        if vector is None or vector.shape != (self.dimensions,):
            raise EmbeddingAnswerError(
                f"{self._who()} returned a vector of {size} values for input {position}, "
                f"expected {self.dimensions}; check `dimensions:` in config/embeddings.yaml "
                f"(and `send_dimensions:` if the model has a fixed size)"
            )
        return vector

    # -- errors ----------------------------------------------------------------------------

    def _who(self) -> str:
        return f"{self._model.provider} model {self.model_key!r} ({self.model_id})"

    def _translate(self, exc: openai.OpenAIError) -> EmbeddingError:
        if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
            # The server's text is left out: OpenAI's echoes part of the key.
            return EmbeddingAuthError(
                f"{self._who()}: the API key in the environment variable {self._variable} was "
                f"rejected (HTTP {exc.status_code}). Check that {self._variable} holds a valid "
                f"key with access to {self.model_id}."
            )
        retried = (
            f"gave up within max_retries: {self._model.max_retries}, one budget for 429/5xx, "
            "timeouts, connection errors and unusable answers"
        )
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            if status not in (408, 409, 429) and status < 500:
                retried = "not retried: a repeat would get the same answer"
            wait = _retry_after(exc)
            if wait is not None and wait > _SDK_MAX_RETRY_AFTER:
                retried = (
                    f"not retried: the server asked for a {wait:.0f} s wait, longer than the "
                    f"{_SDK_MAX_RETRY_AFTER:.0f} s the client waits; try again later"
                )
            return EmbeddingError(
                f"{self._who()}: HTTP {status}: {self._scrub(_message_of(exc))} ({retried})"
            )
        if isinstance(exc, openai.APITimeoutError):
            return EmbeddingError(
                f"{self._who()}: no answer within {self._model.timeout_seconds} s ({retried})"
            )
        if isinstance(exc, openai.APIConnectionError):
            return EmbeddingError(
                f"{self._who()}: the connection to {self._client.base_url} failed "
                f"(refused, reset or closed early; {retried})"
            )
        return EmbeddingError(f"{self._who()}: {type(exc).__name__}: {self._scrub(str(exc))}")

    def _scrub(self, message: str) -> str:
        if self._api_key:
            message = message.replace(self._api_key, "***")
        if len(message) > _MESSAGE_LIMIT:
            message = message[:_MESSAGE_LIMIT] + "..."
        return message


def _retry_after(exc: openai.APIStatusError) -> float | None:
    """Seconds the server asked to wait (`retry-after-ms` or `Retry-After` in seconds)."""
    headers = exc.response.headers
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        try:
            return float(headers[name]) * scale
        except (KeyError, ValueError):
            continue
    return None


def _message_of(exc: openai.OpenAIError) -> str:
    """The provider's own words, without the SDK's "Error code: N - " prefix."""
    message = getattr(exc, "message", None) or str(exc)
    return re.sub(r"^Error code: \d+ - ", "", message)
