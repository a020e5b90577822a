"""One Dagster resource per external system: PostgreSQL, Qdrant and the embedding models.

Each resolves its location from the environment when it is used, not at import, so loading the
code location never connects anywhere and never needs a secret.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import psycopg
from pydantic import PrivateAttr
from qdrant_client import QdrantClient

from vector_pipeline import locations
from vector_pipeline.config import ProjectConfig, load_config
from vector_pipeline.database import open_database
from vector_pipeline.embedders import Embedder, build_embedder
from vector_pipeline.vector_store import open_qdrant


class PostgresResource(dg.ConfigurableResource):
    """The source database: `database_url`, else $DATABASE_URL (`vector-pipeline dev` sets it).

    Without either it uses the embedded server only if a demo created it under the state folder;
    otherwise it fails naming DATABASE_URL, so a worker missing its settings syncs nothing.
    """

    database_url: str | None = None

    @contextmanager
    def connect(self) -> Iterator[psycopg.Connection]:
        # Lock waits are logged as warnings; errors are one line without the password.
        with open_database(self.database_url or locations.database_url()) as conn:
            yield conn


class QdrantResource(dg.ConfigurableResource):
    """Qdrant: `url` (+ $QDRANT_API_KEY and the client options of `locations.qdrant_server`) or
    local-mode `path`, else $QDRANT_URL / $QDRANT_PATH."""

    url: str | None = None
    path: str | None = None

    def location(self) -> locations.QdrantLocation:
        if self.url:
            return locations.qdrant_server(self.url)
        if self.path:
            return locations.QdrantLocation(path=self.path)
        return locations.qdrant_location()

    @contextmanager
    def client(self) -> Iterator[QdrantClient]:
        # In local mode this waits while another run holds the storage folder.
        with open_qdrant(self.location()) as client:
            yield client


class EmbeddingsResource(dg.ConfigurableResource):
    """The models of `config/embeddings.yaml`; API keys are read from the environment on use."""

    config_dir: str | None = None
    _config: ProjectConfig | None = PrivateAttr(default=None)

    @property
    def project(self) -> ProjectConfig:
        if self._config is None:
            self._config = load_config(self.config_dir)
        return self._config

    @contextmanager
    def embedder(self, model_key: str) -> Iterator[Embedder]:
        key, model = self.project.embeddings.model(model_key)
        embedder = build_embedder(key, model)
        try:
            yield embedder
        finally:
            embedder.close()
