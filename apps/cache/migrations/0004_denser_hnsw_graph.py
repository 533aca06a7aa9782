from __future__ import annotations

import pgvector.django.indexes
from django.contrib.postgres.operations import AddIndexConcurrently, RemoveIndexConcurrently
from django.db import migrations

_NEW = "cache_entry_embedding_hnsw_next"


class Migration(migrations.Migration):
    """A denser HNSW graph (m 24, ef_construction 100 instead of 16 and 64): at a million entries
    in one tenant recall@1 goes from 0.92 to 0.97 at the same ef_search, with no slower queries
    (``bench/cache_perf.py --parts nn``). The new index is built beside the old one without
    blocking writes, the old one dropped, the new one given the old name: lookups keep an index
    throughout."""

    atomic = False
    dependencies = [("cache", "0003_cache_entry_fillfactor")]
    operations = [
        AddIndexConcurrently(
            model_name="cacheentry",
            index=pgvector.django.indexes.HnswIndex(
                ef_construction=100, fields=["embedding"], m=24, name=_NEW, opclasses=["vector_cosine_ops"]),
        ),
        RemoveIndexConcurrently(model_name="cacheentry", name="cache_entry_embedding_hnsw"),
        migrations.RenameIndex(model_name="cacheentry", new_name="cache_entry_embedding_hnsw", old_name=_NEW),
    ]
