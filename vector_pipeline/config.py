"""Typed project configuration, parsed once from `config/embeddings.yaml` and `config/tables.yaml`.

Everything downstream (the sync engine, the CLI, the Dagster definitions) receives these models,
never raw YAML, so a mistake in a file is reported once, before any row is touched, with the
file, the key and what to write instead.
"""

from __future__ import annotations

import hashlib
import os
import re
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vector_pipeline.sparse import LANGUAGES, SparseSettings

CONFIG_DIR_ENV = "VECTOR_PIPELINE_CONFIG_DIR"
EMBEDDINGS_FILE = "embeddings.yaml"
TABLES_FILE = "tables.yaml"
ORCHESTRATION_FILE = "orchestration.yaml"

# Asset and partition names end up in Dagster, which accepts only these characters.
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ENV_REFERENCE = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")
# Qdrant rejects collection names with path separators and a few other characters.
_COLLECTION_SAFE = re.compile(r"^[A-Za-z0-9_.\-]+$")


class ConfigError(ValueError):
    """A configuration file is wrong; the message names the file, the key and the fix."""


class MissingSecretError(RuntimeError):
    """An environment variable that holds a secret is not set."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SecretFromEnv(_Strict):
    """A secret given in YAML as `${VAR}`: only the variable's name is kept, never its value."""

    variable: str

    def resolve(self, where: str) -> str:
        value = os.environ.get(self.variable)
        if not value:
            raise MissingSecretError(
                f"{where} needs the environment variable {self.variable}, which is not set. "
                f"Export {self.variable}=<your key> before running."
            )
        return value


def _parse_secret(value: Any) -> Any:
    if isinstance(value, SecretFromEnv) or value is None:
        return value
    if isinstance(value, str):
        match = _ENV_REFERENCE.match(value.strip())
        if match:
            return SecretFromEnv(variable=match.group(1))
    # Never echo the value: it may be a pasted key.
    raise ValueError(
        "must be a reference to an environment variable such as ${OPENAI_API_KEY}; "
        "keys are never written in config files"
    )


# Every model's BM25 languages unless it names its own: the reference design's users keep
# Arabic and Persian beside English. English text encodes exactly as fastembed's Qdrant/bm25
# under these too (sparse.py), so only Arabic-script text differs from the plain recipe.
# Persian text is normalised and matched under "arabic" as well; "persian" would add the only
# Persian stopword list there is (1,481 entries), which also drops Arabic content words such as
# خير, عمل and زمان from documents and queries, so it is for Persian-only collections.
DEFAULT_SPARSE_LANGUAGES = ("english", "arabic")
# Arabic tokens keep their normalised form by default: on known-item queries over Sahih
# al-Bukhari, BM25 alone finds 0.965 of them in the top 10 unstemmed, 0.93 with Snowball's
# Arabic stemmer and 0.945 with a light (prefix/suffix) stemmer (benchmarks/retrieval.py's
# queries, 1,000 hadith; BENCHMARKS.md). English keeps Snowball: Qdrant/bm25 parity.
DEFAULT_UNSTEMMED = ("arabic",)


class SparseConfig(_Strict):
    """A model's BM25 settings (sparse.py); recorded in each of its collections' metadata."""

    languages: list[str] = Field(
        default=list(DEFAULT_SPARSE_LANGUAGES),
        description=f"Tokens are stemmed and filtered per script; one of {', '.join(LANGUAGES)}.",
    )

    unstemmed: list[str] = Field(
        default=list(DEFAULT_UNSTEMMED),
        description="Languages whose tokens are not stemmed (their normalised form is kept).",
    )

    @model_validator(mode="after")
    def _valid(self) -> SparseConfig:
        self.settings()  # raises ValueError naming the language; pydantic adds the key
        return self

    def settings(self) -> SparseSettings:
        return SparseSettings(
            languages=tuple(self.languages),
            unstemmed=tuple(n for n in self.unstemmed if n in self.languages),
        )


class _ModelBase(_Strict):
    id: str = Field(
        min_length=1, description="The provider's model name, e.g. text-embedding-3-small."
    )
    dimensions: int = Field(gt=0, le=65536)
    batch_size: int = Field(default=64, gt=0, description="Texts per embedding call.")
    # Batches embedded at once while earlier ones are written and later ones read.
    max_concurrent_requests: int = Field(default=1, ge=1, le=64)
    # What the provider charges, in US dollars per million input tokens (`plan` and session
    # cost budgets use it); unset for an API model means "price unknown".
    price_per_million_tokens: float | None = Field(default=None, ge=0)
    sparse: SparseConfig = Field(default_factory=SparseConfig)

    @field_validator("id")
    @classmethod
    def _collection_safe(cls, value: str) -> str:
        if not _COLLECTION_SAFE.match(value):
            raise ValueError(
                "may hold only letters, digits, '_', '-' and '.', because it becomes part of "
                "the Qdrant collection name"
            )
        return value


class LocalModel(_ModelBase):
    """A sentence-embedding model run in-process on CPU from weights installed with the package."""

    provider: Literal["local"]
    max_tokens_per_input: int = Field(default=256, gt=0)
    batch_size: int = Field(default=32, gt=0)
    threads: int | None = Field(default=None, gt=0)


class DeterministicModel(_ModelBase):
    """Hash-derived vectors: free and instant, for tests and benchmarks, useless for meaning."""

    provider: Literal["deterministic"]
    batch_size: int = Field(default=256, gt=0)
    # None: no limit. Set, rows longer than this many words are chunked (tests of long rows).
    max_tokens_per_input: int | None = Field(default=None, gt=0)


class _HttpModel(_ModelBase):
    api_key: Annotated[SecretFromEnv, Field(description="${ENV_VAR} holding the key")]
    base_url: str | None = None
    max_inputs_per_request: int = Field(default=2048, gt=0)
    max_tokens_per_request: int = Field(default=300_000, gt=0)
    max_tokens_per_input: int = Field(default=8191, gt=0)
    max_retries: int = Field(default=6, ge=0)
    # The most one attempt of a request may take in all (connect, send, the whole answer), not
    # per read: embedders/http_limits.py.
    timeout_seconds: float = Field(default=60.0, gt=0)
    # Whether to send `dimensions` in the request (only some models accept it).
    send_dimensions: bool = True
    batch_size: int = Field(default=256, gt=0)
    max_concurrent_requests: int = Field(default=4, ge=1, le=64)
    # Client-side limits, kept below the provider's so requests wait here instead of failing.
    requests_per_minute: int | None = Field(default=None, gt=0)
    tokens_per_minute: int | None = Field(default=None, gt=0)

    @field_validator("api_key", mode="before")
    @classmethod
    def _secret(cls, value: Any) -> Any:
        return _parse_secret(value)


class OpenAIModel(_HttpModel):
    """OpenAI's embeddings API, or any server that speaks it (set `base_url`)."""

    provider: Literal["openai"]
    # How vectors travel: base64 float32 is a third of the bytes of decimal JSON and decodes
    # without a parse per float. `float` for a server that does not support base64.
    encoding_format: Literal["base64", "float"] = "base64"


class JinaModel(_HttpModel):
    """Jina AI's embeddings API, which speaks the OpenAI protocol at its own address."""

    provider: Literal["jinaai"]
    encoding_format: Literal["base64", "float"] = "float"
    base_url: str | None = "https://api.jina.ai/v1"
    max_tokens_per_input: int = Field(default=8192, gt=0)
    task: str | None = "retrieval.passage"
    query_task: str | None = "retrieval.query"


EmbeddingModel = Annotated[
    LocalModel | DeterministicModel | OpenAIModel | JinaModel, Field(discriminator="provider")
]


class EmbeddingsConfig(_Strict):
    default: str
    models: dict[str, EmbeddingModel] = Field(min_length=1)

    @field_validator("models")
    @classmethod
    def _model_keys(cls, models: dict[str, Any]) -> dict[str, Any]:
        for key in models:
            if not _NAME.match(key):
                raise ValueError(
                    f"model key {key!r} must start with a letter or '_' and hold only letters, "
                    "digits and '_', because it becomes a Dagster partition key"
                )
        return models

    @model_validator(mode="after")
    def _default_is_a_model(self) -> EmbeddingsConfig:
        if self.default not in self.models:
            raise ValueError(
                f"default is {self.default!r}, which is not one of the models "
                f"({', '.join(self.models)}); set it to one of them"
            )
        return self

    def sparse_settings(self, key: str) -> SparseSettings:
        """The BM25 settings of model `key`; the default ones for a key not configured (a
        stand-in embedder in tests and benchmarks)."""
        model = self.models.get(key)
        return (model.sparse if model else SparseConfig()).settings()

    def model(self, key: str | None = None) -> tuple[str, EmbeddingModel]:
        """The model named `key`, or the default; unknown names fail with the known ones."""
        key = key or self.default
        if key not in self.models:
            raise ConfigError(
                f"unknown model {key!r}; {EMBEDDINGS_FILE} defines: {', '.join(self.models)}"
            )
        return key, self.models[key]


DEFAULT_TEXT_TEMPLATE = "TITLE: {title}\nCONTENT: {content}"
# Bumped whenever `render_text` changes what it makes of the same values, or how texts become
# points: every table's marks are then re-checked once (rows whose points are as they would be
# written now are marked again unpaid). 2: long rows are chunked, no longer cut. 3: template
# columns render in PostgreSQL's text form (`true`, `{a,b}`, `1 day 02:00:00`), not Python's.
RENDERING_VERSION = 3


class ChunkingConfig(_Strict):
    """How a row longer than the model's input limit becomes several points (chunks.py)."""

    enabled: bool = Field(
        default=True, description="false: long texts are cut at the limit (flagged truncated)."
    )
    overlap_tokens: int = Field(
        default=32, ge=0, le=1024, description="Tokens each chunk repeats from the one before."
    )
    repeat: tuple[str, ...] | None = Field(
        default=None,
        description="Template fields repeated on every chunk (default: those of at most "
        "300 characters in the row).",
    )


class TableConfig(_Strict):
    """One syncable table. `name` is the Dagster asset name; `table` is the SQL table."""

    name: str
    table: str
    schema_: str | None = Field(default=None, alias="schema")
    data_type: str = Field(min_length=1)
    # The key columns, in key order: one name, or a list for a composite key. They must be a
    # unique, NOT NULL key of the table (checked against the database before any row is read).
    primary_key: tuple[str, ...] = ("id",)
    text_template: str = DEFAULT_TEXT_TEMPLATE
    payload_columns: tuple[str, ...] = ()
    name_column: str | None = None
    collection_base: str
    chunking: ChunkingConfig = Field(default_factory=ChunkingConfig)
    # What a NULL column becomes in the text. The reference design built its texts with
    # Python f-strings, which print NULL as "None"; a table adopted from it (adoption.py) sets
    # `null_as: "None"` so its rows with NULL fields keep their points instead of paying again.
    null_as: str = ""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _repeat_fields(self) -> TableConfig:
        unknown = [f for f in self.chunking.repeat or () if f not in self.text_columns]
        if unknown:
            raise ValueError(
                f"chunking.repeat names {unknown[0]!r}, which text_template does not use; "
                f"use some of {', '.join(self.text_columns)}"
            )
        return self

    @field_validator("name")
    @classmethod
    def _asset_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(
                "must start with a letter or '_' and hold only letters, digits and '_', "
                "because it becomes a Dagster asset name; set `table:` for the SQL name"
            )
        return value

    @field_validator("primary_key", mode="before")
    @classmethod
    def _key_columns(cls, value: Any) -> Any:
        columns = (value,) if isinstance(value, str) else tuple(value or ())
        if not columns or not all(isinstance(c, str) and c for c in columns):
            raise ValueError("must name a column, or list the columns of a composite key")
        if len(set(columns)) != len(columns):
            raise ValueError("lists a column twice")
        return columns

    @field_validator("collection_base")
    @classmethod
    def _base_name(cls, value: str) -> str:
        if not _COLLECTION_SAFE.match(value):
            raise ValueError("may hold only letters, digits, '_', '-' and '.'")
        return value

    @field_validator("text_template")
    @classmethod
    def _template_fields(cls, value: str) -> str:
        fields = template_columns(value)
        if not fields:
            raise ValueError("names no column; write e.g. 'TITLE: {title}\\nCONTENT: {content}'")
        return value

    @property
    def text_columns(self) -> tuple[str, ...]:
        """Columns whose change alters the embedded text, in template order."""
        return template_columns(self.text_template)

    @property
    def rendering(self) -> str:
        """A fingerprint of how rows become texts and points: the template, the chunking and
        the rendering rules' version. Marks made under another rendering vouch for other
        points (store_state.py)."""
        chunking = self.chunking.model_dump_json()
        text = f"{RENDERING_VERSION}\0{self.text_template}\0{chunking}"
        if self.null_as:
            # Only when set, so tables that never set it keep their fingerprint.
            text += f"\0null_as={self.null_as}"
        return hashlib.md5(text.encode()).hexdigest()

    @property
    def payload_columns_and_name(self) -> tuple[str, ...]:
        """The columns a point's payload (meta_data and name) shows besides its text."""
        named = (self.name_column,) if self.name_column else ()
        return tuple(dict.fromkeys((*self.payload_columns, *named)))

    @property
    def row_columns(self) -> tuple[str, ...]:
        """The columns a sync reads for a row's text, payload and name, each once. The key
        travels as its key text (points.py), so key columns are read only if used here."""
        wanted = [*self.text_columns, *self.payload_columns]
        if self.name_column:
            wanted.append(self.name_column)
        return tuple(dict.fromkeys(wanted))

    @property
    def selected_columns(self) -> tuple[str, ...]:
        """Every column a sync reads, key columns first, each once."""
        wanted = [*self.primary_key, *self.text_columns, *self.payload_columns]
        if self.name_column:
            wanted.append(self.name_column)
        return tuple(dict.fromkeys(wanted))

    def render_text(self, row: Mapping[str, Any]) -> str:
        """The text that gets embedded: the template's literal text with each field replaced by
        its column's value as read (source.py reads template columns in PostgreSQL's text form,
        e.g. `{a,b}`, `{"color": "red"}`, `1 day 02:00:00`, `2024-05-01 09:30:00+00`), NULL as
        `null_as` (empty by default)."""
        return "".join(
            literal + render_value(row, field, self.null_as)
            for literal, field in template_segments(self.text_template)
        )

    def has_text(self, row: Mapping[str, Any]) -> bool:
        """Whether some text column holds visible text; a row without any (all NULL, blank, or
        only invisible characters such as zero-width spaces) is skipped, never sent (the sync,
        `plan` and the reconciliation all use this one test)."""
        return any(
            row[c] is not None and str(row[c]).translate(_INVISIBLE).strip()
            for c in self.text_columns
        )


# Characters that show nothing and that `str.strip` keeps: zero-width space, non-joiner and
# joiner, word joiner, and the byte-order mark (zero-width no-break space).
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff"))


def render_value(row: Mapping[str, Any], field: str | None, null_as: str) -> str:
    """One template field's text: the column's value as read, NULL as `null_as`; "" for the
    literal-only segment (`field` None)."""
    if field is None:
        return ""
    value = row[field]
    return null_as if value is None else str(value)


def template_segments(template: str) -> list[tuple[str, str | None]]:
    """The template as (literal text, the field after it or None), in order; `{{`/`}}` are
    literal braces. The template is one `template_columns` accepted."""
    return [(literal, field) for literal, field, _, _ in string.Formatter().parse(template)]


def template_columns(template: str) -> tuple[str, ...]:
    """The column names a template refers to, in order, each once.

    Raises ValueError naming the first field that is not a plain `{column}`: attribute access,
    indexing or positional fields would let a config file reach into Python objects and would
    not map to a trigger column; a format spec (`{title:>99999999}`) could make every text
    huge and a conversion (`{title!r}`) would change it, so neither is allowed.
    """
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(
            f"is not a valid template ({exc}); write literal braces as {{{{ }}}}"
        ) from exc
    columns: list[str] = []
    for _literal, field, spec, conversion in parsed:
        if field is None:
            continue
        if not field or not field.isidentifier():
            raise ValueError(
                f"field {{{field}}} must be a plain column name such as {{title}}; positional, "
                "attribute and index fields are not supported"
            )
        if spec or conversion:
            written = field + (f"!{conversion}" if conversion else "")
            written += f":{spec}" if spec else ""
            raise ValueError(
                f"field {{{written}}} must be a plain column name such as {{{field}}}; format "
                "specs (:...) and conversions (!r, !s, !a) are not supported"
            )
        columns.append(field)
    return tuple(dict.fromkeys(columns))


class TablesConfig(_Strict):
    schema_: str = Field(default="public", alias="schema")
    collection_base: str = "knowledge"
    # The Qdrant alias readers query, per collection base: it serves the default model's
    # collection once that holds every row, so a model switch never shows them a partial one.
    # null: no alias.
    active_alias: str | None = "{collection_base}_active"
    tables: tuple[TableConfig, ...] = Field(min_length=1)

    @field_validator("active_alias")
    @classmethod
    def _alias_template(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            name = value.format(collection_base="base")
        except (KeyError, IndexError, ValueError):
            raise ValueError(
                "may use only {collection_base}, e.g. '{collection_base}_active'"
            ) from None
        if not _COLLECTION_SAFE.match(name) or name.endswith("_hybrid"):
            raise ValueError(
                "must give a name of letters, digits, '_', '-' and '.' that does not end in "
                "'_hybrid' (collection names do)"
            )
        return value

    def check_aliases(self, path: Path) -> None:
        """Refuse two collection bases that would share one active alias: each base's syncs
        would move it onto their own collection, which lacks the other base's rows."""
        owner: dict[str, str] = {}
        for table in self.tables:
            alias = self.alias_for(table.collection_base)
            if alias is None:
                continue
            other = owner.setdefault(alias, table.collection_base)
            if other != table.collection_base:
                raise ConfigError(
                    f"{path}: active_alias: collection bases {other!r} and "
                    f"{table.collection_base!r} would share the alias {alias!r}, and each would "
                    "point it at a collection without the other's rows; include "
                    "{collection_base} in it, e.g. '{collection_base}_active'"
                )

    def alias_for(self, collection_base: str) -> str | None:
        """The active alias of tables with `collection_base`, if aliases are on."""
        if self.active_alias is None:
            return None
        return self.active_alias.format(collection_base=collection_base)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _tables_from_mapping(cls, data: Any) -> Any:
        """`tables:` is a mapping of asset name to settings; fill in inherited defaults."""
        if not isinstance(data, dict):
            return data
        tables = data.get("tables")
        if isinstance(tables, dict):
            expanded = []
            for name, settings in tables.items():
                settings = dict(settings or {})
                settings.setdefault("name", name)
                settings.setdefault("table", name)
                settings.setdefault("collection_base", data.get("collection_base", "knowledge"))
                expanded.append(settings)
            data = {**data, "tables": expanded}
        return data

    @model_validator(mode="after")
    def _unique(self) -> TablesConfig:
        seen: set[str] = set()
        for table in self.tables:
            if table.name in seen:
                raise ValueError(f"table {table.name!r} is listed twice")
            seen.add(table.name)
        return self

    def schema_for(self, table: TableConfig) -> str:
        return table.schema_ or self.schema_

    def table(self, name: str) -> TableConfig:
        for table in self.tables:
            if table.name == name:
                return table
        raise ConfigError(
            f"unknown table {name!r}; {TABLES_FILE} defines: "
            f"{', '.join(t.name for t in self.tables)}"
        )


class ScheduleConfig(_Strict):
    cron: str = "*/30 * * * *"
    # Off by default: operators turn it on in the Dagster UI (or here) once they want it.
    enabled: bool = False

    @field_validator("cron")
    @classmethod
    def _five_fields(cls, value: str) -> str:
        if len(value.split()) != 5:
            raise ValueError("must be a five-field cron expression such as '*/30 * * * *'")
        return value


class SensorsConfig(_Strict):
    sessions_interval_seconds: int = Field(default=5, ge=1)
    pending_rows_interval_seconds: int = Field(default=60, ge=1)
    pending_rows_enabled: bool = False


# Where a run's steps execute, and the package that provides each executor.
EXECUTORS = {
    "in_process": ("dagster", "in_process_executor"),
    "multiprocess": ("dagster", "multiprocess_executor"),
    "k8s": ("dagster_k8s", "k8s_job_executor"),
    "docker": ("dagster_docker", "docker_executor"),
    "celery": ("dagster_celery", "celery_executor"),
    "celery_k8s": ("dagster_celery_k8s", "celery_k8s_job_executor"),
}


class ScaleOutConfig(_Strict):
    """How one sync of a table into a model's collection spreads over steps and machines."""

    # Steps that sync one (table, model) together, sharing the rows through claims. Each is a
    # separate process (multiprocess), pod (k8s), container (docker) or task (celery).
    workers: int = Field(default=1, ge=1, le=64)
    executor: Literal[tuple(EXECUTORS)] = "multiprocess"  # type: ignore[valid-type]
    # The executor's own settings, as its Dagster docs give them (e.g. max_concurrent, or a
    # k8s job's namespace and resources); checked when the code location loads.
    executor_config: dict[str, Any] = Field(default_factory=dict)


class OrchestrationConfig(_Strict):
    """`config/orchestration.yaml` (optional): the schedule and sensors Dagster runs, and how
    a sync scales out."""

    schedule: ScheduleConfig = ScheduleConfig()
    sensors: SensorsConfig = SensorsConfig()
    scale_out: ScaleOutConfig = ScaleOutConfig()


class ProjectConfig(_Strict):
    embeddings: EmbeddingsConfig
    tables: TablesConfig
    orchestration: OrchestrationConfig = OrchestrationConfig()
    config_dir: Path

    def check_point_ids(self) -> None:
        """Refuse tables whose point ids could coincide in a collection they share.

        Point ids hash `f"{data_type}_{key_text}_{collection}"` (the reference formula, kept
        because deployments depend on it). In one collection, two tables' ids can only meet
        if one's `DATA_TYPE_` is a prefix of the other's: `TICKET` with key `EU_1` and
        `TICKET_EU` with key `1` both hash `TICKET_EU_1_...`. Key types are not known here,
        so any such pair is refused (equal data types included).
        """
        by_collection: dict[str, list[TableConfig]] = {}
        for table in self.tables.tables:
            for collection in self.collections_for(table):
                by_collection.setdefault(collection, []).append(table)
        for collection, tables in sorted(by_collection.items()):
            for index, first in enumerate(tables):
                for second in tables[index + 1 :]:
                    a, b = sorted((first, second), key=lambda t: len(t.data_type))
                    if (b.data_type + "_").startswith(a.data_type + "_"):
                        raise ConfigError(
                            f"{self.config_dir / TABLES_FILE}: tables.{second.name}.data_type: "
                            f"tables {first.name!r} ({first.data_type}) and {second.name!r} "
                            f"({second.data_type}) share collection {collection!r} and their "
                            f"point ids can collide ({a.data_type!r} + '_' + key can equal "
                            f"{b.data_type!r} + '_' + key); give one a data_type that neither "
                            "starts nor is the start of the other's followed by '_', or its "
                            "own collection_base"
                        )

    def collection_for(self, table: TableConfig, model_key: str | None = None) -> str:
        """The collection of `table` for the model `model_key` (default: the default model)."""
        _, model = self.embeddings.model(model_key)
        return collection_name_for(table.collection_base, model.id)

    def collections_for(self, table: TableConfig) -> list[str]:
        """Every collection the configured models give `table`, each once."""
        return sorted(
            {
                collection_name_for(table.collection_base, model.id)
                for model in self.embeddings.models.values()
            }
        )


def default_config_dir() -> Path:
    """`$VECTOR_PIPELINE_CONFIG_DIR`, else `./config` (Dagster and the CLI run from the repo)."""
    configured = os.environ.get(CONFIG_DIR_ENV)
    return Path(configured) if configured else Path.cwd() / "config"


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: file not found. Run from the project root or set {CONFIG_DIR_ENV} "
            "to the folder holding embeddings.yaml and tables.yaml."
        ) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        # Only the position and the kind of problem: the parser's own message quotes the
        # offending line, which may hold a pasted key.
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        problem = getattr(exc, "problem", None) or "syntax error"
        # Some problems quote a name from the file (a tag, an alias); a character or a
        # parser event ('<stream end>') is safe to show.
        problem = re.sub(r"'(?!<)[^']{2,}'", "'...'", problem)
        raise ConfigError(f"{path}: not valid YAML at {where}: {problem}") from None


def _explain(path: Path, errors: list[Any], prefix: tuple[str | int, ...] = ()) -> ConfigError:
    lines = []
    for error in errors:
        location = ".".join(str(part) for part in (*prefix, *error["loc"]))
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key; remove it or check its spelling"
        elif error["type"] == "missing":
            message = "required key is missing; add it"
        elif error["type"] == "union_tag_invalid":
            message = "unknown provider; use one of: local, openai, jinaai, deterministic"
        elif error["type"] == "union_tag_not_found":
            message = "`provider` is missing; use one of: local, openai, jinaai, deterministic"
        lines.append(f"{path}: {location or '(top level)'}: {message}")
    return ConfigError("\n".join(lines))


def load_embeddings(path: Path) -> EmbeddingsConfig:
    data = _read_yaml(path)
    if not isinstance(data, dict) or not isinstance(data.get("embeddings"), dict):
        raise ConfigError(
            f"{path}: expected a top-level `embeddings:` mapping with `default` and `models`"
        )
    try:
        return EmbeddingsConfig.model_validate(data["embeddings"])
    except ValidationError as exc:
        raise _explain(path, exc.errors(), ("embeddings",)) from None


def load_tables(path: Path) -> TablesConfig:
    data = _read_yaml(path)
    if not isinstance(data, dict) or not isinstance(data.get("tables"), dict):
        raise ConfigError(
            f"{path}: expected a top-level `tables:` mapping of asset name to table settings"
        )
    try:
        return TablesConfig.model_validate(data)
    except ValidationError as exc:
        # Pydantic locates errors inside `tables` by position; name the table instead.
        names = list(data["tables"])
        errors = exc.errors()
        for error in errors:
            loc = error["loc"]
            if len(loc) >= 2 and loc[0] == "tables" and isinstance(loc[1], int):
                error["loc"] = ("tables", names[loc[1]], *loc[2:])
        raise _explain(path, errors) from None


def load_orchestration(path: Path) -> OrchestrationConfig:
    if not path.exists():
        return OrchestrationConfig()
    data = _read_yaml(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with `schedule`, `sensors` or `scale_out`")
    try:
        return OrchestrationConfig.model_validate(data)
    except ValidationError as exc:
        raise _explain(path, exc.errors()) from None


def load_config(config_dir: Path | str | None = None) -> ProjectConfig:
    """Parse and cross-check the files; raise ConfigError naming file, key and fix."""
    directory = Path(config_dir) if config_dir is not None else default_config_dir()
    config = ProjectConfig(
        embeddings=load_embeddings(directory / EMBEDDINGS_FILE),
        tables=load_tables(directory / TABLES_FILE),
        orchestration=load_orchestration(directory / ORCHESTRATION_FILE),
        config_dir=directory,
    )
    config.check_point_ids()
    config.tables.check_aliases(directory / TABLES_FILE)
    return config


def collection_name_for(base: str, model_id: str) -> str:
    """`{base}_{model_id}_hybrid`: the reference design's name, one collection per model."""
    return f"{base}_{model_id}_hybrid"
