"""The `embedding_session` table as a Django model: copy this file into one of your apps.

`vector-pipeline init-db` creates the table and owns its layout, hence `managed = False`: no
migration of yours creates or alters it. Your application inserts a row to ask for a sync and
reads the row to show how it goes; Dagster launches one run per PENDING row and writes the
status and progress back (README: "Asking for a sync from any application").

Why not the model `inspectdb` prints: Django sends every column in its INSERT, so a model without
`db_default` sends '' for `status` and NULL for the counters, `created_at` and `run_token`, and
PostgreSQL refuses the row (NOT NULL and CHECK constraints). Here those columns have
`db_default`: Django writes DEFAULT for them, PostgreSQL fills them in (PENDING, zeros, now(), a
fresh `run_token`) and Django reads them back from the INSERT's RETURNING.

Needs Django 5.0 or later (`db_default`) on PostgreSQL. If init-db ran with a `schema:` other
than public, put that schema on the connection's search path, e.g. DATABASES["default"]
["OPTIONS"] = {"options": "-c search_path=myschema,public"}.
"""

from __future__ import annotations

from decimal import Decimal

from django.contrib.postgres.fields import ArrayField
from django.contrib.postgres.functions import RandomUUID
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models.functions import Now

# The columns an application sets when it asks for a sync; vector_pipeline writes the rest.
REQUEST_FIELDS = ("model", "tables", "token_budget", "cost_budget")


class EmbeddingSession(models.Model):
    class Status(models.TextChoices):
        PENDING = "PENDING"
        PROCESSING = "PROCESSING"
        COMPLETED = "COMPLETED"
        FAILED = "FAILED"

    id = models.BigAutoField(primary_key=True)

    # What the application asks for; all optional.
    model = models.TextField(
        null=True, blank=True, help_text="A key of config/embeddings.yaml; empty: the default."
    )
    tables = ArrayField(
        models.TextField(),
        null=True,
        blank=True,
        help_text="Names of configured tables; empty: every table.",
    )
    token_budget = models.BigIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="Stop before the batch that would spend more tokens than this.",
    )
    cost_budget = models.DecimalField(
        # The column is numeric without a scale; these bound what a form accepts, not the column.
        max_digits=12,
        decimal_places=4,
        null=True,
        blank=True,
        validators=[MinValueValidator(Decimal("0.0001"))],
        help_text="US dollars, at the model's price_per_million_tokens.",
    )

    # Written by vector_pipeline; PostgreSQL fills in the defaults on INSERT.
    status = models.TextField(choices=Status.choices, db_default=Status.PENDING, editable=False)
    total_items = models.IntegerField(db_default=0, editable=False)
    processed_items = models.IntegerField(db_default=0, editable=False)
    progress = models.IntegerField(db_default=0, editable=False, help_text="Percent, 0-100.")
    tokens_used = models.BigIntegerField(db_default=0, editable=False)
    error_message = models.TextField(null=True, editable=False)
    created_at = models.DateTimeField(db_default=Now(), editable=False)
    started_at = models.DateTimeField(null=True, editable=False)
    finished_at = models.DateTimeField(null=True, editable=False)
    run_id = models.TextField(null=True, editable=False, help_text="The Dagster run.")
    run_token = models.UUIDField(db_default=RandomUUID(), editable=False)

    class Meta:
        managed = False
        db_table = "embedding_session"
        ordering = ("-id",)

    def __str__(self) -> str:
        return f"embedding session {self.pk} ({self.status})"

    @property
    def finished(self) -> bool:
        return self.status in (self.Status.COMPLETED, self.Status.FAILED)

    def save(self, *args, **kwargs) -> None:
        """Insert every column; afterwards update only the request columns.

        A run writes status and progress while this instance holds what it read earlier; a
        plain save() would write those stale values back (a running session moved back to
        PENDING, its progress reset). Changing a request after its run started has no effect.
        """
        if not self._state.adding and kwargs.get("update_fields") is None:
            kwargs["update_fields"] = REQUEST_FIELDS
        super().save(*args, **kwargs)
