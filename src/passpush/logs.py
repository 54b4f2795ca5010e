"""The server's logs: text or one JSON object a line, their level, and what they never say.

PASSPUSH_LOG_FORMAT=json writes each record as {"time", "level", "logger", "message"} plus
the context the task it came from set (log_context: the project and the gRPC method of a
call, the project and ticket of a delivery), and "exception" with the traceback.
A Formatter subclass rather than a JSON-logging library: the output is those few keys, and
the parts that need care (the context, database errors) are passpush's own either way.

No secret reaches a line through an error: the drivers' texts of a database error carry
the values of the row or key at fault (PostgreSQL's "DETAIL: Failing row contains (...)",
a notification body, a push token), so a database error is shown by its first line alone,
in a traceback and as an argument (%s, %r) alike. SQLAlchemy's engines hide the statements'
parameters (store/db.py).
"""

from __future__ import annotations

import contextvars
import json
import logging
import traceback
from collections.abc import Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# One line per request or connection at INFO (httpx: every Google Wallet API request):
# WARNING and above only, unless PASSPUSH_LOG_LEVEL=DEBUG.
CHATTY_LIBRARIES = (
    "aioapns",
    "asyncio",
    "google.auth",
    "grpc",
    "httpcore",
    "httpx",
    "sqlalchemy",
    "urllib3",
    "uvicorn",
)
# Their DEBUG lines hold HTTP/2 header blocks: APNs device tokens (the :path) and the
# APNs token's JWT. Never below WARNING.
HEADER_LOGGERS = ("h2", "hpack")

# The context of the task a record comes from: each gRPC call and each delivery lane is a
# task of its own, so a value set in one is seen by its records only.
_context: contextvars.ContextVar[Mapping[str, str | int]] = contextvars.ContextVar(
    "passpush_log_context", default=MappingProxyType({})
)


def log_context(**fields: str | int) -> None:
    """The context of the current task's records from now on (replacing what it had)."""
    _context.set(fields)


def configure_logging(env: Mapping[str, str]) -> None:
    """Logging as PASSPUSH_LOG_FORMAT and PASSPUSH_LOG_LEVEL say; ValueError naming the
    variable for a value it cannot take."""
    level = (env.get("PASSPUSH_LOG_LEVEL") or "INFO").upper()
    if level not in LEVELS:
        raise ValueError(
            f"PASSPUSH_LOG_LEVEL must be one of {', '.join(LEVELS)}, "
            f"got {env['PASSPUSH_LOG_LEVEL']!r}"
        )
    form = (env.get("PASSPUSH_LOG_FORMAT") or "text").lower()
    if form not in FORMATS:
        raise ValueError(
            f"PASSPUSH_LOG_FORMAT must be text or json, got {env['PASSPUSH_LOG_FORMAT']!r}"
        )
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if form == "json" else SafeTextFormatter(TEXT_FORMAT))
    handler.addFilter(_safe_arguments)
    logging.basicConfig(level=level, handlers=[handler], force=True)
    for name in CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(level if level == "DEBUG" else "WARNING")
    for name in HEADER_LOGGERS:
        logging.getLogger(name).setLevel("WARNING")


class SafeTextFormatter(logging.Formatter):
    def formatException(self, ei: Any) -> str:
        return safe_traceback(ei[1])


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_context.get(),
        }
        if record.exc_info and record.exc_info[1] is not None:
            line["exception"] = safe_traceback(record.exc_info[1])
        if record.stack_info:
            line["stack"] = record.stack_info
        return json.dumps(line, ensure_ascii=False, default=str)


def safe_text(error: BaseException) -> str:
    """What an error says, less what a database error's later lines say."""
    text = str(error)
    return text.partition("\n")[0] if _is_database_error(error) else text


def _is_database_error(error: BaseException) -> bool:
    return type(error).__module__.partition(".")[0] in ("asyncpg", "sqlalchemy")


def safe_traceback(error: BaseException) -> str:
    """traceback.format_exception's text, each error in the chain told by safe_text."""
    lines: list[str] = []
    _render(error, lines, set())
    return "".join(lines).rstrip("\n")


def _render(error: BaseException, lines: list[str], seen: set[int]) -> None:
    seen.add(id(error))
    cause, context = error.__cause__, error.__context__
    if cause is not None and id(cause) not in seen:
        _render(cause, lines, seen)
        lines.append("\nThe above exception was the direct cause of the following exception:\n\n")
    elif context is not None and not error.__suppress_context__ and id(context) not in seen:
        _render(context, lines, seen)
        lines.append("\nDuring handling of the above exception, another exception occurred:\n\n")
    if error.__traceback__ is not None:
        lines.append("Traceback (most recent call last):\n")
        lines.extend(traceback.format_tb(error.__traceback__))
    kind = type(error)
    name = kind.__qualname__
    if kind.__module__ != "builtins":
        name = f"{kind.__module__}.{name}"
    text = safe_text(error)
    lines.append(f"{name}: {text}\n" if text else f"{name}\n")


class _SafeError:
    """An error given to a log call as an argument, told by safe_text."""

    def __init__(self, error: BaseException) -> None:
        self._error = error

    def __str__(self) -> str:
        return safe_text(self._error)

    def __repr__(self) -> str:
        if not _is_database_error(self._error):
            return repr(self._error)
        return f"{type(self._error).__name__}({safe_text(self._error)!r})"


def _safe_arguments(record: logging.LogRecord) -> bool:
    if isinstance(record.args, tuple) and any(isinstance(a, BaseException) for a in record.args):
        record.args = tuple(
            _SafeError(a) if isinstance(a, BaseException) else a for a in record.args
        )
    return True
