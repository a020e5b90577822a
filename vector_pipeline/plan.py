"""What a sync would cost before it runs: pending rows, tokens and dollars per table and model.

Tokens are counted with the provider's own tokenizer where it is available offline (OpenAI's
cl100k_base, exactly; the local models' own tokenizers), and bounded by UTF-8 bytes for Jina,
whose tokenizer is not (an upper bound). A text over the model's input limit is counted as the
chunks the sync will send (chunks.py: the repeated header and the overlap included), or cut at
the limit when the table's chunking is off. Up to `sample` pending rows are read; beyond that
the count is scaled to all pending rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import psycopg
from qdrant_client import QdrantClient

from vector_pipeline.chunks import Chunker
from vector_pipeline.config import (
    DeterministicModel,
    EmbeddingModel,
    LocalModel,
    OpenAIModel,
    ProjectConfig,
    TableConfig,
    collection_name_for,
)
from vector_pipeline.embedders.batching import Cl100kCounter, Utf8ByteCounter
from vector_pipeline.points import chunk_layout, content_hash, holds, stored_rows
from vector_pipeline.source import SourceTable
from vector_pipeline.store_state import StoreState

DEFAULT_SAMPLE = 10_000


@dataclass(frozen=True)
class PlanEntry:
    table: str
    model: str
    collection: str
    pending: int
    rows_read: int  # pending rows whose text was counted (at most the sample)
    no_text: int  # of those, rows that would be skipped (no text): never sent
    # Of those, rows whose point already holds their text: marked without being sent (None:
    # Qdrant not consulted, so every row with text is counted as sent).
    already_current: int | None
    tokens: int  # estimated tokens for every pending row
    exact: bool  # every pending row was counted, with the provider's own tokenizer
    tokenizer: str
    price_per_million_tokens: float | None
    cost: float | None  # US dollars; None when the model has no price

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class _ModelTokens:
    """A model's own count (the embedder's count_tokens, special tokens included): the local
    models' tokenizers, and the deterministic model's words."""

    def __init__(self, model: LocalModel | DeterministicModel) -> None:
        from vector_pipeline.embedders import build_embedder

        self._embedder = build_embedder("plan", model)
        if isinstance(model, DeterministicModel):
            self.name = "words"
        elif model.id == "multilingual-e5-small":
            self.name = "sentencepiece (XLM-R)"
        else:
            self.name = "word pieces"

    def count(self, texts: Sequence[str]) -> list[int]:
        count = self._embedder.count_tokens  # type: ignore[attr-defined]
        return [count(text) for text in texts]


Counter = Cl100kCounter | Utf8ByteCounter | _ModelTokens


def token_counter(model: EmbeddingModel) -> tuple[Counter, bool]:
    """The counter for `model` and whether it is the provider's exact tokenizer."""
    if isinstance(model, OpenAIModel):
        return Cl100kCounter(), True
    if isinstance(model, LocalModel | DeterministicModel):
        return _ModelTokens(model), True
    return Utf8ByteCounter(), False


def input_limit(model: EmbeddingModel) -> int | None:
    """The tokens one input may hold, as the embedder applies it (None: no limit)."""
    cap = getattr(model, "max_tokens_per_input", None)
    per_request = getattr(model, "max_tokens_per_request", None)
    return min(cap, per_request) if cap and per_request else cap


def text_tokens(counter: Counter, texts: Sequence[str]) -> int:
    """The tokens whole `texts` hold, uncut: what a session budget reserves before a batch is
    sent (the sync chunks long texts, so the chunks' overlap and repeated headers add a
    little more, about 10% for texts over the limit; see `row_chunks` for the exact count)."""
    return sum(counter.count(texts)) if texts else 0


def row_chunks(
    counter: Counter, cap: int | None, chunker: Chunker, table: TableConfig, values: dict
) -> tuple[int, str, int]:
    """(chunks, chunk_layout, tokens) of one row as the sync would send it: its chunks when it
    is over the model's input limit (`cap`) and `chunker` is on, else one text, cut at the
    limit if need be."""
    text = table.render_text(values)
    (n,) = counter.count([text])
    if not cap or n <= cap:
        return 1, chunk_layout([text]), n
    if not chunker.enabled:
        return 1, chunk_layout([text]), cap
    chunks = chunker.split(values)
    return len(chunks), chunk_layout(chunks), sum(counter.count(chunks))


def price(model: EmbeddingModel) -> float | None:
    """Dollars per million tokens; 0 for a model that runs here, None when unknown."""
    if model.price_per_million_tokens is not None:
        return model.price_per_million_tokens
    # A model that runs here costs nothing per token.
    return 0.0 if isinstance(model, LocalModel | DeterministicModel) else None


LOOKUP_BATCH = 1000  # point ids per Qdrant lookup


def plan(
    conn: psycopg.Connection,
    config: ProjectConfig,
    models: Sequence[str] | None = None,
    tables: Sequence[str] | None = None,
    sample: int = DEFAULT_SAMPLE,
    qdrant: QdrantClient | None = None,
) -> list[PlanEntry]:
    """One entry per table and model (default: the default model). With `qdrant`, rows whose
    points already hold their text, in the chunks the sync would send, are left out of the
    tokens and the cost, as the sync marks them without sending them."""
    keys = list(models or ()) or [config.embeddings.default]
    entries: list[PlanEntry] = []
    for model_key in keys:
        _, model = config.embeddings.model(model_key)
        counter, exact_tokenizer = token_counter(model)
        for table in config.tables.tables:
            if tables and table.name not in tables:
                continue
            collection = collection_name_for(table.collection_base, model.id)
            source = SourceTable.for_config(conn, config, table)
            state = StoreState(conn, qdrant, config.tables.schema_, table, collection)
            # After a text_template change the sync re-checks every row (store_state.py):
            # each is pending in effect, and only those whose text changed get paid for.
            every_row = state.rendering_changed()
            pending = (
                source.counts(collection).total if every_row else source.pending_count(collection)
            )
            texts = (
                source.pending_values(collection, sample, every_row=every_row) if pending else []
            )
            with_text = {key: values for key, values in texts if values is not None}
            cap = input_limit(model)
            chunker = Chunker(table, lambda text, c=counter: c.count([text])[0], cap, model_key)
            sent = {
                row: row_chunks(counter, cap, chunker, table, values)
                for row, values in with_text.items()
            }
            current: set[str] = set()
            if qdrant is not None:
                hashes = [
                    (key, content_hash(table.render_text(values)))
                    for key, values in with_text.items()
                ]
                for start in range(0, len(hashes), LOOKUP_BATCH):
                    page = dict(hashes[start : start + LOOKUP_BATCH])
                    found = stored_rows(
                        qdrant, table.data_type, collection, list(page), verify=page
                    )
                    # Adopted as the sync adopts: the whole text, in the chunks it would send.
                    current |= {
                        key
                        for key, row in found.items()
                        if holds(row, page[key], sent[key][0], sent[key][1])
                    }
            counted = sum(tokens for key, (_, _, tokens) in sent.items() if key not in current)
            everything = len(texts) >= pending
            tokens = counted if everything else round(counted * pending / max(len(texts), 1))
            per_million = price(model)
            entries.append(
                PlanEntry(
                    table=table.name,
                    model=model_key,
                    collection=collection,
                    pending=pending,
                    rows_read=len(texts),
                    no_text=len(texts) - len(with_text),
                    already_current=len(current) if qdrant is not None else None,
                    tokens=tokens,
                    exact=everything and exact_tokenizer,
                    tokenizer=counter.name,
                    price_per_million_tokens=per_million,
                    cost=None if per_million is None else tokens * per_million / 1_000_000,
                )
            )
    return entries
