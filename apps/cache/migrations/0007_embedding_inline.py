from __future__ import annotations

from django.db import migrations


class Migration(migrations.Migration):
    """Keep an entry's embedding and answer in its row. A row is about 2.3 kB (the 384-dimension
    vector 1.5 kB, a short answer 0.6 kB compressed), past the 2 kB at which Postgres moves
    columns to the TOAST table: pgvector stores vectors EXTERNAL, so a search that reads a
    context's rows instead of the HNSW index (the planner's choice for a context of a few
    hundred rows) fetched every vector through the TOAST index (six buffers a row, which the
    planner does not count), and with the vector kept in the row the answer moved out instead,
    one more fetch on every hit. ``toast_tuple_target`` 4080 keeps a row of up to about 4 kB
    whole (two rows a page at least); MAIN keeps the vector in a longer row and moves the answer
    out first (docs/benchmarks.md, "Cheaper embeddings for the lookup"). Rows written before
    keep their layout until rewritten (entries expire)."""

    dependencies = [("cache", "0006_cacheentry_embedding_model")]
    operations = [
        migrations.RunSQL("ALTER TABLE cache_cacheentry ALTER COLUMN embedding SET STORAGE MAIN",
                          "ALTER TABLE cache_cacheentry ALTER COLUMN embedding SET STORAGE EXTERNAL"),
        migrations.RunSQL("ALTER TABLE cache_cacheentry SET (toast_tuple_target = 4080)",
                          "ALTER TABLE cache_cacheentry RESET (toast_tuple_target)"),
    ]
