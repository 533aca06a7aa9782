"""The body of ``POST /v1/files`` on its way to Django, held to the upload size limit.

Django reads a request's whole body before the view runs, with no limit, and its multipart
parser reads nothing of a body without a ``Content-Length``. So this runs first (the gateway's
HTTP door routes the upload here):

- a declared length over the limit is refused with 413 before a byte of the body is read;
- a body sent without one (``Transfer-Encoding: chunked``) is counted as it arrives and
  refused with 413 the moment it passes the limit; under it, it is spooled (to disk past
  Django's ``FILE_UPLOAD_MAX_MEMORY_SIZE``, as Django spools) and handed to Django with its
  length, in pieces;
- any other upload goes to Django as it came.

The limit is ``BATCH_FILE_MAX_BYTES`` for the file plus room for the multipart framing.
"""

from __future__ import annotations

import tempfile

from django.conf import settings

from apps.core.errors import PayloadTooLarge, error_body
from apps.gateway.asgi_io import header, json_send

FRAMING = 64 * 1024
PIECE = 64 * 1024


def _too_large() -> PayloadTooLarge:
    return PayloadTooLarge(f"The file exceeds {settings.BATCH_FILE_MAX_BYTES} bytes.", param="file")


async def upload_pass(app, scope, receive, send) -> None:
    """Answer 413 for an upload over the limit, else pass it to ``app`` (Django) with a length."""
    limit = settings.BATCH_FILE_MAX_BYTES + FRAMING
    length = header(scope, b"content-length")
    if length is not None:
        if length.isdigit() and int(length) > limit:
            await json_send(send, 413, error_body(_too_large()))
            return
        await app(scope, receive, send)
        return
    with tempfile.SpooledTemporaryFile(max_size=settings.FILE_UPLOAD_MAX_MEMORY_SIZE) as spool:
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            piece = message.get("body", b"")
            size += len(piece)
            if size > limit:
                # The rest of the body is left unread (the server discards it once answered).
                await json_send(send, 413, error_body(_too_large()))
                return
            spool.write(piece)
            if not message.get("more_body"):
                break
        spool.seek(0)
        headers = [(name, value) for name, value in scope["headers"] if name != b"transfer-encoding"]
        headers.append((b"content-length", str(size).encode()))
        await app({**scope, "headers": headers}, _replay(spool, size, receive), send)


def _replay(spool, size: int, receive):
    """A ``receive`` giving the spooled body in pieces, then whatever the server sends next
    (the client's disconnect)."""
    left = size

    async def replayed() -> dict:
        nonlocal left
        if left < 0:
            return await receive()
        piece = spool.read(PIECE)
        left -= len(piece)
        more = left > 0
        if not more:
            left = -1
        return {"type": "http.request", "body": piece, "more_body": more}

    return replayed
