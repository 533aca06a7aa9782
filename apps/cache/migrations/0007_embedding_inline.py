from __future__ import annotations

from django.db import migrations


class Migration(migrations.Migration):
    """Keep an entry's embedding in its row. pgvector stores vectors EXTERNAL: a row past about
    2 kB (a 384-dimension vector is 1.5 kB, the response the rest) has its vector moved to the
    TOAST table, so a search that reads a context's rows instead of the HNSW index (the
    planner's choice for a context of a few hundred rows) fetches every vector through the TOAST
    index: six buffers a row, which the planner does not count (docs/benchmarks.md, "Cheaper
    embeddings for the lookup"). MAIN moves the other columns out first. Rows written before
    keep their storage until rewritten (entries expire)."""

    dependencies = [("cache", "0006_cacheentry_embedding_model")]
    operations = [
        migrations.RunSQL("ALTER TABLE cache_cacheentry ALTER COLUMN embedding SET STORAGE MAIN",
                          "ALTER TABLE cache_cacheentry ALTER COLUMN embedding SET STORAGE EXTERNAL"),
    ]
