"""Deleting many rows without a long transaction: one bounded statement at a time."""

from __future__ import annotations

from django.db import connection


def delete_in_batches(sql: str, params: list, *, batch_size: int) -> int:
    """Run ``sql``, a DELETE of at most ``batch_size`` rows (its last parameter, after ``params``),
    until a run deletes fewer; each run is its own short transaction, so no long lock holds back
    the writers of the table. Returns how many rows went."""
    deleted = 0
    while True:
        with connection.cursor() as cursor:
            cursor.execute(sql, [*params, batch_size])
            count = cursor.rowcount
        deleted += count
        if count < batch_size:
            return deleted
