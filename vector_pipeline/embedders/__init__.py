"""Dense embedding providers behind one interface (`Embedder`), chosen by config.

`build_embedder` is the only constructor the rest of the project uses. It resolves an HTTP
model's API key first, so a missing key fails before any row is read, naming the variable.
Provider modules are imported on demand: the deterministic provider used by most tests should
not pay for loading onnxruntime or the openai SDK.
"""

from __future__ import annotations

from vector_pipeline.config import (
    DeterministicModel,
    EmbeddingModel,
    JinaModel,
    LocalModel,
    OpenAIModel,
)
from vector_pipeline.embedders.base import (
    DenseEmbeddings,
    Embedder,
    EmbeddingAnswerError,
    EmbeddingAuthError,
    EmbeddingError,
)

__all__ = [
    "DenseEmbeddings",
    "Embedder",
    "EmbeddingAnswerError",
    "EmbeddingAuthError",
    "EmbeddingError",
    "build_embedder",
]


def build_embedder(model_key: str, model: EmbeddingModel) -> Embedder:
    """The embedder for one configured model; raises MissingSecretError if its key is unset."""
    if isinstance(model, OpenAIModel | JinaModel):
        api_key = model.api_key.resolve(
            where=(
                f"model {model_key!r} "
                f"(config/embeddings.yaml: embeddings.models.{model_key}.api_key)"
            )
        )
        from vector_pipeline.embedders.openai_api import OpenAIEmbedder

        return OpenAIEmbedder(model_key, model, api_key)
    if isinstance(model, LocalModel):
        from vector_pipeline.embedders.e5 import MODEL_ID as E5_ID

        if model.id == E5_ID:
            from vector_pipeline.embedders.e5 import E5Embedder

            return E5Embedder(model_key, model)
        from vector_pipeline.embedders.local import LocalEmbedder

        return LocalEmbedder(model_key, model)
    if isinstance(model, DeterministicModel):
        from vector_pipeline.embedders.deterministic import DeterministicEmbedder

        return DeterministicEmbedder(model_key, model)
    raise TypeError(f"model {model_key!r}: no embedder for {type(model).__name__}")
