"""The coordinator's log output: plain text (uvicorn's own format), or one JSON object per line for a log pipeline.

With JSON logs every record, uvicorn's and fleetgrid's alike, is one line with ``time``, ``level``, ``logger`` and
``message`` (and ``exception`` with its traceback); the request log (:mod:`fleetgrid.coordinator.observe`, logger
``fleetgrid.access``) adds the request's fields at the top level.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

__all__ = ["LOG_FORMATS", "JsonFormatter", "log_config"]

LOG_FORMATS = ("text", "json")


class JsonFormatter(logging.Formatter):
    """One JSON object per record; a record's ``fields`` (passed as ``extra={"fields": {...}}``) join it."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def log_config(log_format: str, level: str) -> dict[str, Any] | None:
    """A :func:`logging.config.dictConfig` for uvicorn's ``log_config``: None keeps uvicorn's text format. JSON
    sends every record to stderr as a JSON line: fleetgrid's from INFO (the request log among them: a pipeline
    filters), the others' from ``level``."""
    if log_format == "text":
        return None
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {"json": handler},
        "root": {"handlers": ["json"], "level": level.upper()},
        "loggers": {
            "uvicorn": {"handlers": [], "level": level.upper(), "propagate": True},
            "uvicorn.error": {"handlers": [], "level": level.upper(), "propagate": True},
            "uvicorn.access": {"handlers": [], "level": level.upper(), "propagate": True},
            "fleetgrid": {"handlers": [], "level": "INFO", "propagate": True},
        },
    }
