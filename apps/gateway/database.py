"""Connection details for the gateway's own async Postgres connections."""

from __future__ import annotations

from django.db import connections
from psycopg.conninfo import make_conninfo


def conninfo(alias: str = "default") -> str:
    """A libpq connection string for the same database Django uses (test database included)."""
    params = connections[alias].get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    params.pop("prepare_threshold", None)
    return make_conninfo(**{key: value for key, value in params.items() if value not in (None, "")})
