"""Any value PostgreSQL can hold renders in its SQL text form or its row is skipped with a
reason; the rest of the table carries on."""

from __future__ import annotations

import pytest

from vector_pipeline.config import TableConfig

TABLE = TableConfig(
    name="doc", table="doc", data_type="DOC", collection_base="test", text_template="{a} {b}"
)


@pytest.mark.parametrize(
    "blank",
    [None, "", " \n\t", "\u200b", "\u200c\u200d", "\ufeff", "\u2060", " \u200b \u00a0\u200b "],
)
def test_invisible_only_text_counts_as_blank(blank):
    assert not TABLE.has_text({"a": blank, "b": blank})
    assert TABLE.has_text({"a": blank, "b": "x\u200b"})
