"""JSON log lines carry the level, logger, message and a call's extra fields such as the request id."""

from __future__ import annotations

import json
import logging

from apps.core.logs import JsonFormatter


def test_it_writes_one_json_object_with_the_request_id():
    record = logging.getLogger("apps.gateway.pipeline.cache").makeRecord(
        "apps.gateway.pipeline.cache", logging.INFO, __file__, 1, "semantic candidate %s", ("rejected",), None,
        extra={"request_id": "req-123", "similarity": 0.91})
    line = JsonFormatter().format(record)
    entry = json.loads(line)
    assert entry["message"] == "semantic candidate rejected"
    assert entry["request_id"] == "req-123" and entry["similarity"] == 0.91
    assert entry["level"] == "info" and entry["logger"] == "apps.gateway.pipeline.cache"
    assert "\n" not in line


def test_it_keeps_the_exception():
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.getLogger("x").makeRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    entry = json.loads(JsonFormatter().format(record))
    assert "ValueError: boom" in entry["exception"]
