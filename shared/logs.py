"""Structured logs: one JSON object per line on stderr, with the current trace id.

A decision is logged as ``log.info("decision", extra={"fields": {...}})``; the fields
land at the top level of the line so operators can grep ``'"outcome": "failed"'``.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from shared.telemetry import current_trace_id

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message"}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        trace_id = current_trace_id()
        if trace_id:
            line["trace_id"] = trace_id
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        for key, value in record.__dict__.items():
            if key not in _RESERVED and key != "fields" and not key.startswith("_"):
                line.setdefault(key, value)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def setup_logging(service: str, level: str = "INFO") -> None:
    # The lines carry no caller, thread or process details, so do not collect them for
    # every record: at one line per decision that was a tenth of the scheduler's CPU in
    # a burst. (``_srcfile = None`` is how logging's own source says to skip the caller
    # lookup.)
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # FastStream and uvicorn log every message and request; keep them at warning so the
    # decision lines stay readable. httpx logs every request URL at INFO, and a Telegram
    # URL carries the bot token: it must never reach the log.
    for noisy in ("faststream", "faststream.access", "uvicorn.access", "nats", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
