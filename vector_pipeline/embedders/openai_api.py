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
- inputs the provider will not embed isolated instead of failing the batch: a request refused
  for its content (a 4xx other than 401/403/408/409/429) is split in halves until the inputs at
  fault are alone, and an answer whose vectors are unusable for some inputs only (NaN or
  infinite values; the wrong size, when other vectors have the right one) keeps the good
  vectors and sends the others again, alone in the end. What still fails alone (twice, for a
  refusal; after the retries, for a vector) is returned in `DenseEmbeddings.rejected` with the
  provider's reason, and the sync skips its rows. When no input of a call gets a usable vector,
  a harmless probe text is sent alone, once: if it gets none either, the fault is the
  request's or the model's (a wrong model name, a bad parameter, `dimensions:` wrong) and the
  call's error is raised instead;
- a deadline per attempt and a cap on the bytes of each answer (http_limits.py): httpx's own
  timeouts bound each read, not the request, and nothing bounds a body;
- errors that name the model and the key's variable, never the key, and that carry no SDK
  exception (whose request object holds the `Authorization` header) as cause or context.
"""

from __future__ import annotations

import base64
import os
import random
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
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
from vector_pipeline.embedders.http_limits import (
    ResponseTooLarge,
    limited_http_client,
    response_cap,
    response_limit,
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
# 4xx answers about something other than the inputs: the key, the rate, a timeout, a conflict.
_NOT_ABOUT_INPUTS = frozenset({401, 403, 408, 409, 429})
# Sent alone when nothing of a call was embedded: if it is embedded, the inputs are at fault.
_PROBE_TEXT = "ok"
_DEFAULT_BASE_URL = "https://api.openai.com/v1"


@dataclass(frozen=True)
class _WrongSize:
    """A vector of numbers, but not `dimensions` of them; `size` says how many, or why not."""

    size: object


class _AllWrongSize(EmbeddingAnswerError):
    """Every vector of an answer had the wrong size, and no earlier one of the call the right
    size: `dimensions:` is likely wrong, unless a probe text gets the right size."""


class _InputsRefused(EmbeddingError):
    """The provider refused a request for something in its inputs; `reason` is its one line.

    Internal: callers get a plain EmbeddingError (`_public`) when it cannot be isolated."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


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
        # `timeout_seconds` bounds each attempt as a whole, not each read (http_limits.py).
        base_url = model.base_url or os.environ.get("OPENAI_BASE_URL") or _DEFAULT_BASE_URL
        self._client = openai.OpenAI(
            api_key=api_key,
            base_url=base_url,
            max_retries=model.max_retries,
            timeout=model.timeout_seconds,
            http_client=limited_http_client(
                base_url, model.timeout_seconds, timeout=model.timeout_seconds
            ),
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
        """Vectors for `texts` in order; inputs the provider will not embed are in `rejected`
        (see the module docstring). Raises EmbeddingError (EmbeddingAuthError for a rejected
        key, EmbeddingAnswerError for unusable answers) when the batch as a whole fails."""
        reject_empty(texts)
        if not texts:
            return DenseEmbeddings(vectors=[], truncated=(), tokens=0)
        prepared = prepare_inputs(texts, self._counter, self._per_input)
        truncated = set(prepared.truncated)
        vectors: list[list[float]] = [[] for _ in texts]
        rejected: dict[int, str] = {}
        tokens = 0
        task = self._task(query=False)
        requests = plan_requests(
            prepared.counts, self._model.max_inputs_per_request, self._model.max_tokens_per_request
        )
        # Parts still to send, as input indexes; the last is sent first, so inputs go in order.
        parts = [list(span) for span in reversed(requests)]
        # The provider gave a usable vector for some text of this call (or for the probe):
        # refusals and unusable vectors from now on are about their inputs.
        works = False
        refused_alone: set[int] = set()  # inputs refused once when sent alone
        failure: EmbeddingError | None = None
        while parts:
            part = parts.pop()
            batch = [prepared.texts[i] for i in part]
            counted = sum(prepared.counts[i] for i in part)
            try:
                got, used, shrunk, bad = self._embed_batch(batch, counted, task, sized=works)
            except (_InputsRefused, _AllWrongSize) as fault:
                if not works:
                    works, used = self._probe(task)
                    tokens += used
                if not works:
                    failure = _public(fault)
                    break
                if isinstance(fault, _AllWrongSize):
                    parts.append(part)  # sent again: now its sizes are judged one by one
                elif len(part) == 1 and part[0] in refused_alone:
                    rejected[part[0]] = fault.reason
                elif len(part) == 1:
                    refused_alone.add(part[0])  # once more: a refusal must be persistent
                    parts.append(part)
                else:
                    parts += _halves(part)
                continue
            tokens += used
            truncated.update(part[i] for i in shrunk)
            for index, vector in zip(part, got, strict=True):
                if vector is not None:
                    vectors[index] = vector
                    works = True
            if bad and not works:
                works, used = self._probe(task)
                tokens += used
                if not works:
                    failure = EmbeddingAnswerError(
                        f"{bad[min(bad)]}, and no usable vector for a probe text either"
                    )
                    break
            if len(part) == 1:
                rejected.update((part[i], reason) for i, reason in bad.items())
            elif len(bad) == len(part):
                parts += _halves(part)
            elif bad:
                parts.append([part[i] for i in sorted(bad)])  # sent again, without the good ones
        if failure is not None:
            raise failure
        return DenseEmbeddings(
            vectors=vectors,
            truncated=tuple(sorted(truncated - set(rejected))),
            tokens=tokens,
            rejected=rejected,
        )

    def _probe(self, task: str | None) -> tuple[bool, int]:
        """Whether the provider gives a usable vector for a harmless text at the first try, and
        the tokens it cost: when nothing of a call was embedded, this tells a refusal of its
        inputs from a refusal of the request itself (a wrong model name, a bad parameter, a
        broken model)."""
        try:
            counted = self._counter.count([_PROBE_TEXT])[0]
            got, used, _shrunk, bad = self._embed_batch(
                [_PROBE_TEXT], counted, task, sized=False, max_retries=0
            )
        except EmbeddingAuthError:
            raise
        except EmbeddingError:  # whatever it is, the call's own fault is the one to report
            return False, 0
        return not bad and got[0] is not None, used

    def count_tokens(self, text: str) -> int:
        """Tokens `text` costs: exact (cl100k_base) for OpenAI, an upper bound otherwise."""
        return self._counter.count([text])[0]

    def embed_query(self, text: str) -> list[float]:
        reject_empty([text])
        prepared = prepare_inputs([text], self._counter, self._per_input)
        failure: EmbeddingError | None = None
        try:
            vectors, _used, _shrunk, bad = self._embed_batch(
                prepared.texts, prepared.counts[0], self._task(query=True), sized=False
            )
        except (_InputsRefused, _AllWrongSize) as fault:
            failure = _public(fault)
        if failure is not None:  # raised here, so the internal error is not its context
            raise failure
        if bad:
            raise EmbeddingAnswerError(bad[0])
        vector = vectors[0]
        assert vector is not None  # an input without a vector is in `bad`
        return vector

    def close(self) -> None:
        self._client.close()

    # -- one request -----------------------------------------------------------------------

    def _task(self, *, query: bool) -> str | None:
        if isinstance(self._model, JinaModel):
            return self._model.query_task if query else self._model.task
        return None

    def _embed_batch(
        self,
        batch: list[str],
        counted: int,
        task: str | None,
        *,
        sized: bool,
        max_retries: int | None = None,
    ) -> tuple[list[list[float] | None], int, list[int], dict[int, str]]:
        """Vectors (None for an unusable one), tokens used, indexes (within `batch`) cut after a
        "too long" answer, and why each unusable vector is unusable (one line each).

        Unusable vectors are retried like unusable answers only when `batch` holds one input:
        in a larger batch the caller keeps the good vectors and sends the rest again. `sized`:
        an earlier answer had vectors of the right size, so a wrong size is about its input.
        `max_retries`: this request's retry budget (default: the model's).
        Raises _InputsRefused when the provider refuses the request for its content. Errors
        are raised outside any `except` block, so they carry no SDK exception as context.
        """
        budget = self._model.max_retries if max_retries is None else max_retries
        retries = 0  # spent on this request so far, by the SDK and by us
        shrunk: list[int] = []
        while True:
            failure: EmbeddingError | None = None
            raw: Any = None
            try:
                self._limiter.acquire(counted)
                with response_cap(response_limit(len(batch), self.dimensions)):
                    raw = self._create(batch, task, max_retries=budget - retries)
                self._limiter.observe(raw.headers)
            except ResponseTooLarge as exc:
                failure = EmbeddingError(
                    f"{self._who()}: the answer to {len(batch)} inputs passed {exc.limit:,} "
                    f"bytes, more than {len(batch)} vectors of {self.dimensions} floats can "
                    "need; the rest was not read (not retried)"
                )
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

            outcome = self._read(raw, len(batch), sized=sized)
            if not isinstance(outcome, EmbeddingAnswerError):
                vectors, used, bad = outcome
                if not bad or len(batch) > 1 or retries >= budget:
                    return vectors, used if used is not None else counted, shrunk, bad
                outcome = EmbeddingAnswerError(bad[0])
            if retries >= budget:
                raise type(outcome)(
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
        self, raw: Any, expected: int, *, sized: bool
    ) -> tuple[list[list[float] | None], int | None, dict[int, str]] | EmbeddingAnswerError:
        """Vectors, reported tokens and why some vectors are unusable, from a raw response;
        or why the answer as a whole is unusable.

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
            vectors, bad = self._validate(body, expected, sized=sized)
        except EmbeddingAnswerError as exc:
            return exc
        usage = body.get("usage") if isinstance(body, dict) else None
        used = usage.get("total_tokens") if isinstance(usage, dict) else None
        return vectors, used if isinstance(used, int) else None, bad

    def _validate(
        self, body: Any, expected: int, *, sized: bool
    ) -> tuple[list[list[float] | None], dict[int, str]]:
        """The vectors in input order (None where unusable) and why each unusable one is.

        Raises EmbeddingAnswerError when the answer as a whole cannot be trusted: the wrong
        number of vectors, bad indexes, a vector that is not numbers at all (a broken server),
        or every vector of the wrong size while no vector of the call had the right one (then
        `dimensions:` is wrong, not the inputs). NaN and infinite values are always about
        their input.
        """
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
        vectors: list[list[float] | None] = []
        bad: dict[int, str] = {}
        first_wrong_size: str | None = None
        for at, item in enumerate(ordered):
            vector = self._vector(item.get("embedding"), at)
            if isinstance(vector, _WrongSize):
                first_wrong_size = first_wrong_size or (
                    f"{self._who()} returned a vector of {vector.size} values for input {at}, "
                    f"expected {self.dimensions}; check `dimensions:` in config/embeddings.yaml "
                    f"(and `send_dimensions:` if the model has a fixed size)"
                )
                bad[at] = (
                    f"{self._who()} returned a vector of {vector.size} values for this text, "
                    f"expected {self.dimensions}"
                )
                vectors.append(None)
            elif not np.isfinite(vector).all():
                bad[at] = f"{self._who()} returned NaN or infinite vector values for this text"
                vectors.append(None)
            else:
                vectors.append(vector.tolist())
        if first_wrong_size is not None and not sized and len(bad) == expected:
            raise _AllWrongSize(first_wrong_size)
        return vectors, bad

    def _vector(self, embedding: Any, position: int) -> np.ndarray | _WrongSize:
        """One answer's vector: a JSON list of floats, or base64 of little-endian float32 (what
        `encoding_format: base64` asks for; a server may answer floats anyway).

        Raises EmbeddingAnswerError for something that is not numbers at all."""
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
            raise EmbeddingAnswerError(
                f"{self._who()} returned a vector of {type(embedding).__name__} values for "
                f"input {position}"
            )
        if vector is None or vector.shape != (self.dimensions,):
            return _WrongSize(size)
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
            said = self._scrub(_message_of(exc))
            message = f"{self._who()}: HTTP {status}: {said} ({retried})"
            if 400 <= status < 500 and status not in _NOT_ABOUT_INPUTS:
                return _InputsRefused(message, f"{self._who()}: HTTP {status}: {said}")
            return EmbeddingError(message)
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
        """`message` without the key, on one line, at most _MESSAGE_LIMIT characters."""
        if self._api_key:
            message = message.replace(self._api_key, "***")
        message = " ".join(message.split())
        if len(message) > _MESSAGE_LIMIT:
            message = message[:_MESSAGE_LIMIT] + "..."
        return message


def _public(error: EmbeddingError) -> EmbeddingError:
    """The plain error callers see for an internal one (same message, no context)."""
    kind = EmbeddingAnswerError if isinstance(error, EmbeddingAnswerError) else EmbeddingError
    return kind(str(error))


def _halves(part: list[int]) -> list[list[int]]:
    """`part` split in two, the second half first: parts are sent from the end of the list."""
    middle = len(part) // 2
    return [part[middle:], part[:middle]]


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
