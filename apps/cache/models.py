"""Cached answers, looked up by exact request hash or by embedding similarity."""

from __future__ import annotations

from decimal import Decimal

from django.db import models
from django.utils import timezone
from pgvector.django import HnswIndex, VectorField

EMBEDDING_DIMENSIONS = 384
# apps.cache.embedder.NAMES["minilm"]; also the label of rows saved before entries recorded their
# model (the local model made them unless their tenant had chosen an embeddings model).
LOCAL_MODEL = "local:all-MiniLM-L6-v2"


class CacheEntry(models.Model):
    """One answer, owned by one tenant and namespace. Never visible to another tenant."""

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="cache_entries")
    namespace = models.CharField(max_length=200, blank=True, default="")
    request_hash = models.CharField(max_length=64)
    context_hash = models.CharField(
        max_length=64, default="", help_text="Everything but the last user message: semantic hits need it equal."
    )
    prompt_text = models.TextField()
    embedding = VectorField(dimensions=EMBEDDING_DIMENSIONS, null=True, blank=True)
    # The embedder that made ``embedding`` (``Embedder.name``): a lookup compares only vectors of
    # its own model, so changing the model (CACHE_EMBED_MODEL, a tenant's embeddings model)
    # never matches a prompt against another model's vectors.
    embedding_model = models.CharField(max_length=200, default=LOCAL_MODEL, db_default=LOCAL_MODEL)
    response = models.JSONField()
    model = models.ForeignKey("catalog.Model", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    model_name = models.CharField(max_length=200, blank=True, default="")
    input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    cost = models.DecimalField(max_digits=16, decimal_places=10, default=Decimal("0"))
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    hit_count = models.PositiveIntegerField(default=0)
    last_hit_at = models.DateTimeField(null=True, blank=True)
    # Raised by feedback that one of its semantic hits was wrong: a prompt must be at least this
    # similar for the entry to answer it (exact hits are not affected).
    min_similarity = models.FloatField(null=True, blank=True)
    wrong_hits = models.PositiveIntegerField(default=0, db_default=0)

    class Meta:
        verbose_name_plural = "cache entries"
        constraints = [
            models.UniqueConstraint(fields=["tenant", "namespace", "request_hash"], name="cache_entry_unique_request")
        ]
        indexes = [
            HnswIndex(
                name="cache_entry_embedding_hnsw",
                fields=["embedding"],
                # Denser than pgvector's defaults (16, 64): see migration 0004.
                m=24,
                ef_construction=100,
                opclasses=["vector_cosine_ops"],
            ),
            models.Index(fields=["tenant", "expires_at"], name="cache_entry_tenant_expiry"),
            models.Index(fields=["expires_at"], name="cache_entry_expiry"),
            models.Index(fields=["tenant", "namespace", "context_hash"], name="cache_entry_context"),
        ]

    def __str__(self) -> str:
        return f"{self.tenant_id}/{self.namespace or '-'}/{self.request_hash[:12]}"


class CachePurge(models.Model):
    """A purge of one tenant's cache, or of the entries one model answered in it.

    Written in the purge's transaction; a batch worker's store reads it to drop the entries still
    waiting in its memory that the purge would have deleted (``apps.cache.purges``). Kept as long
    as a job can run (``PURGES_KEEP``), then pruned with the expired entries.
    """

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="+", db_index=False)
    model_name = models.CharField(max_length=200, null=True, blank=True, help_text="Blank: every entry of the tenant.")
    purged_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [models.Index(fields=["tenant", "purged_at"], name="cache_purge_tenant_time")]

    def __str__(self) -> str:
        return f"{self.tenant_id}/{self.model_name or '*'} at {self.purged_at:%Y-%m-%d %H:%M:%S}"
