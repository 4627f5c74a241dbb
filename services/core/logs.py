"""Structured logs: one line per lifecycle event, JSON when stderr is not a TTY. Extra fields go in `extra=`.

Every line, and whatever else the process writes to stdout/stderr (a print, an uncaught traceback), has the
process's secrets replaced by `***` (core.masking)."""

from __future__ import annotations

import logging
import sys
import threading
import time
import traceback
from typing import Any, TextIO

from . import strict_json
from .masking import scrub

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
_SECRET_WORDS = ("password", "secret", "token", "authorization")


def _fields(record: logging.LogRecord) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in vars(record).items():
        if key in _STANDARD:
            continue
        out[key] = "***" if any(w in key.lower() for w in _SECRET_WORDS) else value
    return out


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return scrub(strict_json.dumps(line, default=str, ensure_ascii=True, separators=(", ", ": ")))


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extra = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        base = f"{record.levelname.lower():7} {record.name}: {record.getMessage()}"
        text = f"{base} {extra}" if extra else base
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return scrub(text)


class ScrubbingStream:
    """A text stream whose writes have the secrets masked (a secret split across two writes is not seen: print()
    and traceback writes carry whole lines)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(scrub(text))
        return len(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _mask_streams() -> None:
    """Only in a process that has secrets (core.masking): elsewhere the streams and hooks stay Python's own."""
    from .masking import secret_values

    if not secret_values():
        return
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, ScrubbingStream):
            setattr(sys, name, ScrubbingStream(stream))

    def excepthook(kind: type[BaseException], exc: BaseException, tb: Any) -> None:
        sys.stderr.write("".join(traceback.format_exception(kind, exc, tb)))

    sys.excepthook = excepthook
    threading.excepthook = lambda args: excepthook(args.exc_type, args.exc_value or Exception(), args.exc_traceback)


def setup_logging(level: str = "INFO", json_lines: bool | None = None) -> None:
    use_json = (not sys.stderr.isatty()) if json_lines is None else json_lines
    _mask_streams()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
