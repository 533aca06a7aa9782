"""The files storage (``STORAGES["batch_files"]``) and streaming reads of JSONL from it."""

from __future__ import annotations

from collections.abc import Iterator

from django.core.files.storage import storages


def files_storage():
    return storages["batch_files"]


def lines_read(storage_name: str, *, offset: int = 0, first_index: int = 0) -> Iterator[tuple[int, int, bytes]]:
    """``(index, offset, line)`` for each non-blank line from ``offset`` on, one line in memory
    at a time; ``index`` counts non-blank lines, ``offset`` is where the line starts."""
    index = first_index
    with files_storage().open(storage_name, "rb") as handle:
        if offset:
            handle.seek(offset)
        position = offset
        for raw in iter(handle.readline, b""):
            start = position
            position += len(raw)
            if raw.strip():
                yield index, start, raw
                index += 1
