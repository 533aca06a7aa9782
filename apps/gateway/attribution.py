"""Who and what a request was for, as the client said it, kept on its usage row.

    end user   the chat body's ``user`` (OpenAI; Responses' ``user``; Anthropic's
               ``metadata.user_id`` arrives here as ``user``)
    tags       ``metadata.tags`` (a list, or comma-separated) and ``x-switchyard-tags``: the same
               set routing rules match, kept sorted
    metadata   the body's ``metadata``: up to 16 keys of at most 64 characters, each a string
               (at most 512 characters), number, boolean or list of strings; anything else is
               left out rather than refused, so a client's request never fails over it
    session    ``x-switchyard-session-id``, else ``metadata.session_id``

Nothing here refuses a request: the values are cut to their columns' sizes.
"""

from __future__ import annotations

from dataclasses import dataclass

from apps.gateway.validation import tags_from

MAX_USER = 256
MAX_SESSION = 128
MAX_TAG = 100
MAX_TAGS = 32
MAX_KEYS = 16
MAX_KEY = 64
MAX_VALUE = 512


@dataclass(frozen=True, slots=True)
class Attribution:
    end_user: str = ""
    tags: tuple[str, ...] = ()
    metadata: dict | None = None
    session_id: str = ""


NONE = Attribution()


def _metadata_kept(metadata) -> dict | None:
    if not isinstance(metadata, dict) or not metadata:
        return None
    kept: dict = {}
    for key, value in metadata.items():
        if len(kept) == MAX_KEYS:
            break
        if not isinstance(key, str) or not key or len(key) > MAX_KEY:
            continue
        if isinstance(value, str):
            kept[key] = value[:MAX_VALUE]
        elif isinstance(value, bool | int | float) and value == value:  # not NaN: JSON has none
            kept[key] = value
        elif isinstance(value, list) and all(isinstance(item, str) for item in value):
            kept[key] = [item[:MAX_VALUE] for item in value[:MAX_TAGS]]
    return kept or None


def attribution_from(body: dict, tags_header: str | None, session_header: str | None) -> Attribution:
    """The attribution of a request whose chat-form body is ``body``."""
    user = body.get("user")
    metadata = body.get("metadata")
    tags = tuple(sorted(tag[:MAX_TAG] for tag in tags_from(body, tags_header)))[:MAX_TAGS]
    session = (session_header or "").strip()
    if not session and isinstance(metadata, dict) and isinstance(metadata.get("session_id"), str | int):
        session = str(metadata["session_id"]).strip()
    end_user = user.strip()[:MAX_USER] if isinstance(user, str) else ""
    kept = _metadata_kept(metadata)
    if not (end_user or tags or kept or session):
        return NONE
    return Attribution(end_user=end_user, tags=tags, metadata=kept, session_id=session[:MAX_SESSION])
