"""Log lines for operators: plain text, or one JSON object per line (``--log-format json``).

Both carry the worker's index under ``--workers`` (``MCP_GATEWAY_WORKER``), so the lines of
several processes sharing one stderr can be told apart. A JSON line has ``time`` (ISO 8601,
UTC), ``level``, ``logger``, ``message``, ``worker`` when there is one, ``error`` (the
exception's traceback) when one is logged, and the fields the caller passed as ``extra``, or
as ``extra={"fields": {...}}`` (the access log's ``principal``, ``method``, ``name``,
``backend``, ``status``, ``outcome``, ``latency_ms``).
"""

from __future__ import annotations

import datetime
import logging
import os

import orjson

__all__ = ["FORMATS", "JsonFormatter", "configure"]

FORMATS = ("plain", "json")
"""The values of ``--log-format``."""

# The attributes every LogRecord has: what is left over was passed by the caller as ``extra``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One compact JSON object per record (the module docstring)."""

    def __init__(self, worker: str | None = None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.worker is not None:
            line["worker"] = self.worker
        for key, value in vars(record).items():
            if key == "fields" and isinstance(value, dict):
                # a line's own fields (``extra={"fields": {...}}``): names such as ``name`` that a
                # LogRecord keeps for itself cannot be passed as ``extra`` directly
                for field, item in value.items():
                    line.setdefault(field, item)
            elif key not in _STANDARD and key not in line:
                line[key] = value
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def configure(level: str, fmt: str = "plain") -> None:
    """Send the gateway's logs to stderr at ``level``, as ``fmt`` (``FORMATS``) says."""
    worker = os.environ.get("MCP_GATEWAY_WORKER")
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter(worker))
    else:
        tag = f" [worker {worker}]" if worker is not None else ""
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s{tag} %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
