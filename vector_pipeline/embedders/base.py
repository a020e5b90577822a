"""What every embedding provider returns and raises, so the sync engine never sees a provider.

The engine needs three things from a batch: one vector per text in input order, which texts were
cut to fit the model (they are flagged on their points), and how many tokens it cost. Providers
differ in everything else; that difference stays inside their own module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class DenseEmbeddings:
    """Vectors for one `embed_documents` call.

    `vectors` has one entry per input text, in input order, each `dimensions` floats long.
    `truncated` holds the indexes of inputs cut to the model's per-input token limit.
    `tokens` is what the call consumed: API-reported usage, or counted locally.
    `rejected` maps the indexes of inputs the provider would not embed (it refused them every
    time, or answered them with an unusable vector) to its reason, one line; their entries in
    `vectors` are empty lists. Only HTTP embedders reject inputs.
    """

    vectors: list[list[float]]
    truncated: tuple[int, ...]
    tokens: int
    rejected: Mapping[int, str] = field(default_factory=dict)


class EmbeddingError(RuntimeError):
    """The provider failed after retries, or answered something unusable.

    Messages never contain an API key: they end up in logs and in Dagster's UI.
    """


class EmbeddingAuthError(EmbeddingError):
    """The provider rejected the API key (HTTP 401/403); retrying cannot help."""


class EmbeddingAnswerError(EmbeddingError):
    """The provider answered, but with something unusable: a body that is not JSON, the wrong
    number of vectors, vectors of the wrong size, out of order, or not finite numbers.

    Such answers are usually transient (a proxy cutting a body short, one bad replica), so HTTP
    embedders retry them within the model's `max_retries` before raising this. Nothing from an
    unusable answer is ever returned: when this is raised, no vector of the batch was.
    """


@runtime_checkable
class Embedder(Protocol):
    model_key: str
    model_id: str
    dimensions: int

    def embed_documents(self, texts: Sequence[str]) -> DenseEmbeddings: ...

    def embed_query(self, text: str) -> list[float]: ...

    def close(self) -> None: ...


def check_local_model(
    model_key: str,
    model_id: str,
    dimensions: int,
    max_tokens: int,
    *,
    produces: int,
    positions: int,
    advice: str,
) -> None:
    """Refuse a local model configured with another vector size than it produces, or with an
    input limit over its position embeddings (`advice`: what to use instead)."""
    if dimensions != produces:
        raise ValueError(
            f"model {model_key!r}: {model_id} produces {produces}-d vectors, but "
            f"`dimensions:` says {dimensions}; set it to {produces}"
        )
    if max_tokens > positions:
        raise ValueError(
            f"model {model_key!r}: max_tokens_per_input {max_tokens} is over "
            f"{model_id}'s {positions} positions; use {advice}"
        )


def l2_normalise(matrix: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; an all-zero row stays zero instead of becoming NaN."""
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.maximum(norms, np.finfo(matrix.dtype).tiny)


def reject_empty(texts: Sequence[str]) -> None:
    """Fail loudly on empty inputs: HTTP providers reject a whole request for one of them."""
    empty = [index for index, text in enumerate(texts) if not text]
    if empty:
        shown = ", ".join(str(index) for index in empty[:10])
        more = f" and {len(empty) - 10} more" if len(empty) > 10 else ""
        raise ValueError(
            f"cannot embed empty text (input index {shown}{more}); "
            "skip rows whose rendered text is empty before embedding"
        )
