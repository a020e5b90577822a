"""One-line messages: user input quoted at a bounded length, exceptions cut to their first line.

A 1 MB table name must not make a 1 MB log line, and a driver's multi-line error (context,
hints, the statement) must not turn an error into a wall of text.
"""

from __future__ import annotations

QUOTE_LIMIT = 200  # characters of user input quoted in a message


def shorten(text: str, limit: int = QUOTE_LIMIT) -> str:
    """`text` itself if short, else its start and end around "...(N characters)..."."""
    if len(text) <= limit:
        return text
    half = max(1, (limit - 30) // 2)
    return f"{text[:half]}...({len(text):,} characters)...{text[-half:]}"


def first_line(exc: BaseException) -> str:
    """The first non-blank line of `exc`'s message (its type name if it has none)."""
    for line in str(exc).splitlines():
        if line.strip():
            return shorten(line.strip(), 1000)
    return type(exc).__name__
