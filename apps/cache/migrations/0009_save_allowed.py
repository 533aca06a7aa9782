"""``cache_save_allowed``: whether a live save may insert, decided after waiting for a purge of its
tenant in progress (``apps.cache.purges``), in the save's own statement."""

from django.db import migrations

# VOLATILE: the query inside takes a fresh snapshot, after the lock, and so sees a purge that
# committed while the save waited for it (the INSERT's own snapshot was taken before).
CREATE = """
CREATE OR REPLACE FUNCTION cache_save_allowed(tenant bigint, since timestamptz, model varchar)
RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(23719, (tenant % 2147483648)::int);
    RETURN NOT EXISTS (SELECT 1 FROM cache_cachepurge AS p WHERE p.tenant_id = tenant AND p.purged_at >= since
                       AND (p.model_name IS NULL OR p.model_name = model));
END
$$;
"""
DROP = "DROP FUNCTION IF EXISTS cache_save_allowed(bigint, timestamptz, varchar);"


class Migration(migrations.Migration):
    dependencies = [("cache", "0008_purge")]

    operations = [migrations.RunSQL(CREATE, DROP)]
