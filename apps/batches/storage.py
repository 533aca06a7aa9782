"""The files storage (``STORAGES["batch_files"]``): files stored in it (a ``File`` row and its
bytes), and streaming reads of JSONL from it."""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterable, Iterator

import orjson
from django.core.files import File as DjangoFile
from django.core.files.storage import storages
from django.utils.text import get_valid_filename

from apps.batches.models import File


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


def file_store(*, tenant, content, filename: str, purpose: str) -> File:
    """Store ``content`` (any file-like object, copied in chunks) as a new file of the tenant."""
    file = File(tenant=tenant, purpose=purpose, filename=(filename or "upload.jsonl")[:255])
    safe = get_valid_filename(file.filename) or "file"
    django_file = content if isinstance(content, DjangoFile) else DjangoFile(content, name=safe)
    file.storage_name = files_storage().save(f"{tenant.pk}/{file.pk}/{safe}", django_file)
    file.bytes = files_storage().size(file.storage_name)
    file.save()
    return file


def jsonl_store(*, tenant, filename: str, lines: Iterable[bytes], purpose: str) -> File:
    """A JSONL file written through a temporary file on disk (constant memory), then stored."""
    with tempfile.TemporaryFile() as spool:
        for line in lines:
            spool.write(line)
            spool.write(b"\n")
        spool.seek(0)
        return file_store(tenant=tenant, content=DjangoFile(spool, name=filename), filename=filename,
                          purpose=purpose)


def lines_take(reader, count: int) -> list[tuple[int, int, bytes]]:
    """The next ``count`` lines of a :func:`lines_read` reader (fewer at its end)."""
    taken = []
    for item in reader:
        taken.append(item)
        if len(taken) >= count:
            break
    return taken


def lines_check(storage_name: str) -> tuple[int, tuple[str, int] | None]:
    """The input's line count, and the first ``custom_id`` met twice (with its line), if any.

    Lines that are not JSON are counted and left for the run, which answers them in the error
    file; only a repeated ``custom_id`` fails the whole batch, as output lines are keyed by it.
    """
    count = 0
    seen: set[bytes] = set()
    for index, _offset, raw in lines_read(storage_name):
        count += 1
        try:
            custom_id = orjson.loads(raw).get("custom_id")
        except (orjson.JSONDecodeError, AttributeError):
            continue
        if isinstance(custom_id, str):
            digest = hashlib.blake2b(custom_id.encode(), digest_size=16).digest()  # bounded memory per id
            if digest in seen:
                return count, (custom_id, index)
            seen.add(digest)
    return count, None
