"""OpenAI's Files API for batch inputs and outputs, per tenant.

    POST   /v1/files               multipart: file, purpose=batch   -> file object
    GET    /v1/files               ?purpose=&limit=&after=          -> list
    GET    /v1/files/{id}                                           -> file object
    GET    /v1/files/{id}/content                                   -> the bytes, streamed
    DELETE /v1/files/{id}                                           -> {"id", "object": "file", "deleted": true}

Uploads are spooled to disk by the server (never held in memory), held to the size limit as
they arrive, chunked or not (:mod:`apps.gateway.uploads`), and copied to storage in chunks;
downloads are streamed from storage in 64 KiB pieces.
"""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.http import StreamingHttpResponse

from apps.batches.api.common import json_response, limit_param, list_page, tenant_endpoint, unix
from apps.batches.models import File
from apps.batches.selectors import file_get, files_list
from apps.batches.services import file_create, file_delete
from apps.batches.storage import files_storage
from apps.core.errors import BadRequest

CHUNK = 64 * 1024


def file_object(file: File) -> dict:
    return {"id": file.pk, "object": "file", "bytes": file.bytes, "created_at": unix(file.created_at),
            "filename": file.filename, "purpose": file.purpose, "status": "processed", "status_details": None,
            "expires_at": None}


@tenant_endpoint(("GET", "POST"))
def files(request, key):
    if request.method == "POST":
        upload = request.FILES.get("file")
        if upload is None:
            raise BadRequest("Send the file as the multipart field 'file'.", param="file")
        purpose = request.POST.get("purpose")
        if not purpose:
            raise BadRequest("'purpose' is required (batch).", param="purpose")
        file = file_create(tenant=key.tenant, content=upload, filename=upload.name, purpose=purpose)
        return json_response(file_object(file))
    limit = limit_param(request, default=10_000, maximum=10_000)
    rows = files_list(tenant_id=key.tenant_id, purpose=request.GET.get("purpose"), after=request.GET.get("after"),
                      limit=limit + 1)
    return json_response(list_page(rows, limit, file_object))


@tenant_endpoint(("GET", "DELETE"))
def file_detail(request, key, file_id: str):
    if request.method == "DELETE":
        file = file_delete(tenant_id=key.tenant_id, file_id=file_id)
        return json_response({"id": file.pk, "object": "file", "deleted": True})
    return json_response(file_object(file_get(tenant_id=key.tenant_id, file_id=file_id)))


@tenant_endpoint(("GET",))
def file_content(request, key, file_id: str):
    file = file_get(tenant_id=key.tenant_id, file_id=file_id)
    handle = files_storage().open(file.storage_name, "rb")
    response = StreamingHttpResponse(_pieces(handle), content_type="application/octet-stream")
    response["Content-Length"] = str(file.bytes)
    response["Content-Disposition"] = f'attachment; filename="{file.filename}"'
    return response


async def _pieces(handle):
    """The file in pieces, read off the event loop (an async iterator: Django would otherwise
    read a synchronous one whole into memory before sending it)."""
    read = sync_to_async(handle.read, thread_sensitive=False)
    try:
        while piece := await read(CHUNK):
            yield piece
    finally:
        await sync_to_async(handle.close, thread_sensitive=False)()
