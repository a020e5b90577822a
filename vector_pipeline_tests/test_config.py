"""Bad configuration fails before any row is touched, naming the file, the key and the fix."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from vector_pipeline.config import ConfigError, MissingSecretError, load_config
from vector_pipeline.embedders import build_embedder

pytestmark = pytest.mark.unit

REPO_CONFIG = Path(__file__).resolve().parents[1] / "config"

GOOD_TABLES = """\
schema: public
tables:
  article:
    data_type: ARTICLE
"""

GOOD_EMBEDDINGS = """\
embeddings:
  default: m
  models:
    m: {provider: deterministic, id: det, dimensions: 8}
"""


def write(tmp_path: Path, embeddings: str = GOOD_EMBEDDINGS, tables: str = GOOD_TABLES) -> Path:
    (tmp_path / "embeddings.yaml").write_text(textwrap.dedent(embeddings))
    (tmp_path / "tables.yaml").write_text(textwrap.dedent(tables))
    return tmp_path


def error_for(tmp_path: Path, **files: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, **files))
    return str(info.value)


def test_shipped_config_parses_with_local_default():
    config = load_config(REPO_CONFIG)
    key, model = config.embeddings.model()
    assert (key, model.provider, model.id, model.dimensions) == (
        "e5_small",
        "local",
        "multilingual-e5-small",
        384,
    )
    assert model.sparse.settings().languages == ("english", "arabic")
    assert [t.name for t in config.tables.tables] == ["article", "hadith"]
    article = config.tables.table("article")
    assert article.text_template == "TITLE: {title}\nCONTENT: {content}"
    assert article.text_columns == ("title", "content")
    assert article.collection_base == "knowledge"


def test_defaults_fill_in(tmp_path):
    table = load_config(write(tmp_path)).tables.table("article")
    assert (table.table, table.primary_key) == ("article", ("id",))
    assert table.text_template == "TITLE: {title}\nCONTENT: {content}"
    assert table.render_text({"title": "T", "content": None}) == "TITLE: T\nCONTENT: "


def test_default_must_name_a_model(tmp_path):
    message = error_for(tmp_path, embeddings=GOOD_EMBEDDINGS.replace("default: m", "default: nope"))
    assert "embeddings.yaml: embeddings:" in message
    assert "'nope', which is not one of the models (m)" in message


def test_unknown_provider_is_named(tmp_path):
    message = error_for(tmp_path, embeddings=GOOD_EMBEDDINGS.replace("deterministic", "cohere"))
    assert "embeddings.models.m" in message
    assert "unknown provider; use one of: local, openai, jinaai, deterministic" in message


def test_literal_api_key_is_refused_without_echoing_it(tmp_path):
    message = error_for(
        tmp_path,
        embeddings="""\
        embeddings:
          default: o
          models:
            o: {provider: openai, id: text-embedding-3-small, dimensions: 8, api_key: sk-secret123}
        """,
    )
    assert "embeddings.models.o.openai.api_key" in message or "models.o" in message
    assert "${OPENAI_API_KEY}" in message
    assert "sk-secret123" not in message


def test_missing_api_key_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("VP_TEST_MISSING_KEY", raising=False)
    config = load_config(
        write(
            tmp_path,
            embeddings="""\
            embeddings:
              default: o
              models:
                o:
                  provider: openai
                  id: text-embedding-3-small
                  dimensions: 8
                  api_key: ${VP_TEST_MISSING_KEY}
            """,
        )
    )
    key, model = config.embeddings.model()
    with pytest.raises(MissingSecretError, match="VP_TEST_MISSING_KEY"):
        build_embedder(key, model)


def test_template_fields_must_be_plain_columns(tmp_path):
    message = error_for(
        tmp_path,
        tables=GOOD_TABLES + "    text_template: 'T: {title.__class__}'\n",
    )
    assert "tables.yaml: tables.article.text_template" in message
    assert "must be a plain column name" in message


@pytest.mark.parametrize(
    ("template", "named"),
    [
        ("T: {title:>99999999}", "{title:>99999999}"),
        ("T: {title!r}", "{title!r}"),
        ("T: {title!s:^20}", "{title!s:^20}"),
    ],
)
def test_template_format_specs_and_conversions_are_refused(tmp_path, template, named):
    """`{title:>99999999}` would make every text 100 MB, `{title!r}` would quote it: a template
    holds only plain fields, and the error names the field."""
    message = error_for(tmp_path, tables=GOOD_TABLES + f"    text_template: '{template}'\n")
    assert "tables.yaml: tables.article.text_template" in message
    assert named in message
    assert "format specs" in message and "{title}" in message


def test_template_literal_braces_and_plain_fields_load(tmp_path):
    config = load_config(
        write(tmp_path, tables=GOOD_TABLES + "    text_template: '{{x}} {title}: {body}'\n")
    )
    (table,) = config.tables.tables
    assert table.text_columns == ("title", "body")
    assert table.render_text({"title": "T", "body": None}) == "{x} T: "


def test_unknown_table_key_is_named(tmp_path):
    message = error_for(tmp_path, tables=GOOD_TABLES + "    primary_column: id\n")
    assert "tables.yaml: tables.article.primary_column: unknown key" in message


def test_missing_data_type_is_named(tmp_path):
    message = error_for(tmp_path, tables="tables:\n  article:\n    table: article\n")
    assert "tables.article.data_type: required key is missing" in message


def test_tables_sharing_a_data_type_and_collection_are_refused(tmp_path):
    message = error_for(
        tmp_path,
        tables=GOOD_TABLES + "  other:\n    data_type: ARTICLE\n",
    )
    assert "point ids can collide" in message


def test_asset_names_must_suit_dagster(tmp_path):
    message = error_for(tmp_path, tables="tables:\n  my-table:\n    data_type: X\n")
    assert "tables.my-table.name" in message
    assert "set `table:` for the SQL name" in message


def test_invalid_yaml_and_missing_file(tmp_path):
    (tmp_path / "embeddings.yaml").write_text("embeddings: [unclosed\n")
    (tmp_path / "tables.yaml").write_text(GOOD_TABLES)
    with pytest.raises(ConfigError, match="embeddings.yaml: not valid YAML"):
        load_config(tmp_path)
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nowhere")


def test_unknown_model_and_table_names_list_the_known_ones(tmp_path):
    config = load_config(write(tmp_path))
    with pytest.raises(ConfigError, match="unknown model 'x'.*defines: m"):
        config.embeddings.model("x")
    with pytest.raises(ConfigError, match="unknown table 'x'.*defines: article"):
        config.tables.table("x")
