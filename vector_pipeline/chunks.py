"""Splitting a row's text into chunks that fit the model: the plan, in the model's own tokens.

A row whose rendered text fits the model's input limit is one chunk, exactly the rendered text
(so existing points keep their ids and hashes). A longer one is split:

- The template's short fields (a title, a collection name: by default every field whose value
  has at most `REPEAT_MAX_CHARS` characters, except the row's longest field, which is always
  body; or the table's `chunking.repeat` list) form a header, with the literal text before
  each, repeated at the start of every chunk, so each chunk still says what it belongs to.
- The rest (the long fields with their labels, in template order) is the body, split at
  whitespace into windows of at most the model's limit, counted with the model's own
  tokenizer (`count_tokens`, which includes the model's special tokens and prefix); each
  window starts `overlap_tokens` before the previous one ended, so a phrase cut by a boundary
  is whole in one of the two chunks (at most half a window, so windows always advance). A
  single "word" longer than half a window (a URL, base64) is cut into character slices first.
- Every chunk is checked with `count_tokens` after it is assembled, and shortened word by word
  when the per-word estimate was low (tokenizers merge across spaces rarely, but they may).

Pure functions: no database, no Qdrant. Which points the chunks become is points.py's.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from vector_pipeline.config import ConfigError, render_value, template_segments

# Field values up to this many characters are repeated on every chunk by default: titles,
# names, collection labels; anything longer is body.
REPEAT_MAX_CHARS = 300
# Tokens kept free in every window for the estimate's error (pieces that merge differently
# inside a longer text); the final check catches the rest.
_SAFETY_FRACTION = 0.02
_WORD = re.compile(r"\S+\s*")
# The fewest tokens of text a chunk must have room for, besides the model's own tokens.
_MIN_TEXT_TOKENS = 8

TokenCounter = Callable[[str], int]


def chunk_text(
    template: str,
    values: Mapping[str, Any],
    count_tokens: TokenCounter,
    limit: int,
    *,
    overlap_tokens: int,
    repeat: Sequence[str] | None = None,
    null_as: str = "",
) -> list[str]:
    """The chunks of one row's text: `[rendered]` when it fits `limit` tokens, else chunks of
    at most `limit` tokens each (see the module docstring).

    `values` maps the template's fields to the row's values (None renders as `null_as`, as
    TableConfig.render_text does); `count_tokens` counts what the model reads for a text.
    Raises ValueError when `limit` leaves no room for text.
    """
    segments = [
        (literal, field, render_value(values, field, null_as))
        for literal, field in template_segments(template)
    ]
    rendered = "".join(literal + value for literal, _field, value in segments)
    if count_tokens(rendered) <= limit:
        return [rendered]
    check_limit(count_tokens, limit, "the model")
    overhead = count_tokens("")
    header, body = _header_and_body(segments, repeat)
    safety = max(2, int(limit * _SAFETY_FRACTION))
    budget = limit - safety - count_tokens(header)
    if budget < (limit - overhead) // 4:
        # A header that eats most of the window would leave chunks of little text.
        header, body = "", rendered
        budget = limit - safety - overhead
    words = _words(body, count_tokens, overhead, budget)
    return _windows(header, words, count_tokens, limit, budget, overlap_tokens)


def check_limit(count_tokens: TokenCounter, limit: int, where: str) -> None:
    """Refuse an input limit that leaves too little room for text once the model's own
    tokens (special tokens, e5's prefix) are counted; `where` names the setting to raise."""
    need = count_tokens("") + _MIN_TEXT_TOKENS
    if limit < need:
        raise ValueError(
            f"{where}: max_tokens_per_input {limit} leaves no room for text (the model adds "
            f"{count_tokens('')} tokens of its own); raise it to at least {need}"
        )


def _header_and_body(
    segments: list[tuple[str, str | None, str]], repeat: Sequence[str] | None
) -> tuple[str, str]:
    longest = max(
        (field for _, field, _ in segments if field is not None),
        key=lambda f: max(len(v) for _, g, v in segments if g == f),
    )

    def repeated(field: str | None, value: str) -> bool:
        if field is None:
            return False
        if repeat is not None:
            return field in repeat
        return field != longest and len(value) <= REPEAT_MAX_CHARS

    header = "".join(lit + value for lit, field, value in segments if repeated(field, value))
    body = "".join(lit + value for lit, field, value in segments if not repeated(field, value))
    if header and not header[-1].isspace():
        header += "\n"
    return header, body


def _words(
    body: str, count_tokens: TokenCounter, overhead: int, budget: int
) -> list[tuple[str, int]]:
    """The body as (word with its following whitespace, estimated tokens); leading whitespace
    is dropped, words over half a window are cut into slices."""
    cache: dict[str, int] = {}

    def tokens(word: str) -> int:
        stripped = word.strip()
        if stripped not in cache:
            cache[stripped] = max(1, count_tokens(stripped) - overhead)
        return cache[stripped]

    words: list[tuple[str, int]] = []
    for match in _WORD.finditer(body):
        word = match.group()
        n = tokens(word)
        if n <= budget // 2:
            words.append((word, n))
            continue
        # Characters per slice, so each slice is about a quarter of a window.
        size = max(1, len(word) * (budget // 4) // n)
        for start in range(0, len(word), size):
            piece = word[start : start + size]
            words.append((piece, tokens(piece)))
    return words


def _windows(
    header: str,
    words: list[tuple[str, int]],
    count_tokens: TokenCounter,
    limit: int,
    budget: int,
    overlap_tokens: int,
) -> list[str]:
    chunks: list[str] = []
    overlap_tokens = min(overlap_tokens, budget // 2)
    start = 0
    while start < len(words):
        end, used = start, 0
        while end < len(words) and (end == start or used + words[end][1] <= budget):
            used += words[end][1]
            end += 1
        text = header + "".join(word for word, _ in words[start:end]).rstrip()
        while count_tokens(text) > limit and end - start > 1:
            end -= 1
            text = header + "".join(word for word, _ in words[start:end]).rstrip()
        chunks.append(text)
        if end >= len(words):
            break
        # The next window starts up to `overlap_tokens` back, and always moves forward.
        back, overlap = end, 0
        while back - 1 > start and overlap + words[back - 1][1] <= overlap_tokens:
            back -= 1
            overlap += words[back][1]
        start = back
    return chunks


class Chunker:
    """A table's chunking for one model: `split(values)` gives a row's chunks.

    Chunking needs the embedder's own token count (`count_tokens`) and input limit
    (`max_tokens_per_input`): the local models, e5, OpenAI-compatible APIs (cl100k, exact) and
    Jina (an upper bound in UTF-8 bytes, so its chunks are smaller than they could be). With
    `chunking.enabled: false`, or an embedder without both, a row is one text, cut by the
    provider and flagged `truncated` as before.
    """

    def __init__(
        self, table: Any, count_tokens: TokenCounter | None, limit: int | None, model_key: str
    ) -> None:
        self._table = table
        self._count = count_tokens
        self._limit = limit
        self.enabled = bool(table.chunking.enabled and count_tokens and limit)
        if self.enabled:
            assert count_tokens is not None and limit is not None
            # Before any row is read: a limit too small to chunk by is a configuration error.
            try:
                check_limit(
                    count_tokens,
                    limit,
                    f"model {model_key!r} (config/embeddings.yaml: "
                    f"embeddings.models.{model_key}.max_tokens_per_input)",
                )
            except ValueError as exc:
                raise ConfigError(str(exc)) from None

    @classmethod
    def for_embedder(cls, table: Any, embedder: Any) -> Chunker:
        """The chunking the sync does with `embedder`'s own count and input limit."""
        return cls(
            table,
            getattr(embedder, "count_tokens", None),
            getattr(embedder, "max_tokens_per_input", None),
            embedder.model_key,
        )

    def split(self, values: Mapping[str, Any]) -> list[str]:
        if not self.enabled:
            return [self._table.render_text(values)]
        assert self._count is not None and self._limit is not None
        return chunk_text(
            self._table.text_template,
            {column: values[column] for column in self._table.text_columns},
            self._count,
            self._limit,
            overlap_tokens=self._table.chunking.overlap_tokens,
            repeat=self._table.chunking.repeat,
            null_as=self._table.null_as,
        )
