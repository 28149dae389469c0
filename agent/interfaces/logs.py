"""Interfaces: Logging set-up: journald priority prefixes under systemd, timestamps otherwise, or
JSON."""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import TextIO

from agent.journal.reports import utc_iso

_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


class JournaldFormatter(logging.Formatter):
    """`<N>message`: journald reads the priority and adds its own timestamp.

    journald splits the stream into lines, so every line of a multi-line message (a traceback)
    gets the prefix; otherwise the continuation lines would be logged at the default priority.
    """

    def format(self, record: logging.LogRecord) -> str:
        prio = _PRIORITY.get(record.levelno, 6)
        first, *rest = super().format(record).split("\n")
        return "\n".join([f"<{prio}>{record.name}: {first}", *(f"<{prio}>{line}" for line in rest)])


class JsonFormatter(logging.Formatter):
    """One JSON object per line for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": utc_iso(record.created, z=True),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Configure the root logger once, on stderr (or `stream`).

    No format here shows where a call was made, nor the thread or process: the logging
    module's documented switches stop it collecting them (its caller lookup walks the stack on
    every line; 2-6 µs of a line's 9-15)."""
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    elif fmt == "journald" or (fmt == "auto" and os.environ.get("JOURNAL_STREAM")):
        handler.setFormatter(JournaldFormatter("%(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiosqlite").setLevel(max(logging.INFO, root.level))
