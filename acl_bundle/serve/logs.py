"""The server's log lines as JSON objects (``acl-bundle serve --log-format json``)."""
from __future__ import annotations

import json
import logging

__all__ = ["JsonFormatter"]

_FIELDS = ("protocol", "method", "path", "status", "duration_ms", "client", "endpoint")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the access-log fields."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"time": round(record.created, 6), "level": record.levelname, "logger": record.name,
               "message": record.getMessage()}
        for k in _FIELDS:
            if hasattr(record, k):
                out[k] = getattr(record, k)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)
