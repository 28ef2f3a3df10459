"""Logging set-up for the command line: plain text, or one JSON object per line.

Codec and parser libraries log their own failures loudly: pydicom logs every
decoder plugin that fails on a frame at ERROR with a traceback, pylibjpeg-openjpeg
forwards OpenJPEG's messages. What failed becomes an error row; their words are
kept at DEBUG (``-vv``), one line each, without tracebacks.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import NoReturn


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message (and the exception type)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and record.exc_info[0] is not None:
            entry["exception"] = record.exc_info[0].__name__
        return json.dumps(entry)


LIBRARY_LOGGERS = (
    "pydicom",
    "openjpeg",
    "libjpeg",
    "rle",
    "pylibjpeg",
    "imagecodecs",
    "PIL",
    "gdcm",
)
LIBRARIES = "dicomflow.libraries"  # where their messages go, at DEBUG


class AtDebug(logging.Handler):
    """Hand a library's record on as one DEBUG line of ``dicomflow.libraries.<name>``:
    its message only (a traceback repeats what the error row says)."""

    def emit(self, record: logging.LogRecord) -> None:
        target = logging.getLogger(f"{LIBRARIES}.{record.name}")
        if not target.isEnabledFor(logging.DEBUG):
            return
        try:
            message = record.getMessage()
        except Exception:  # a library's bad format string must not break logging
            message = str(record.msg)
        target.debug("%s: %s", record.levelname, message)


def route_library_logs() -> None:
    """Send the codec and parser libraries' records to :class:`AtDebug` instead of the
    root handlers (idempotent). Their levels are left alone: pydicom resets its own
    when first imported, which may come after this."""
    for name in LIBRARY_LOGGERS:
        library = logging.getLogger(name)
        library.propagate = False
        if not any(isinstance(h, AtDebug) for h in library.handlers):
            library.addHandler(AtDebug())


def configure(level: int, *, json_lines: bool = False) -> None:
    """Configure the root logger once for a command-line run."""
    handler = logging.StreamHandler()
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    route_library_logs()


def exit_flushed(status: int) -> NoReturn:
    """End the process with ``status`` once the logs and the standard streams are
    flushed, without Python's own teardown (freeing every module and object the process
    loaded, which no output needs). Called last, from an exit handler, by the command
    and by worker processes."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, OSError, ValueError):
            stream.flush()
    os._exit(status)
