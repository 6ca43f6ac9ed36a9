"""Log lines: JSON (python-json-logger) with request context, and no document or phone in any.

- `MaskDigits` is a filter on every handler (settings.LOGGING), so it sees every record whatever
  logger wrote it: it formats the message with its args, the exception and the stack, masks every
  run of 8–15 digits (documents, phone numbers — also written 1.020.304.050 or +57 300 123 4567)
  and every string field added with `extra=`, then hands the record on.
- `ContextFilter` adds the request id, clinic, masked session id and action bound with `bind()`
  (contextvars: per request under daphne, per task on a worker).
- daphne writes its access log straight to stdout; `route_daphne_access_log()` (called from
  asgi.py, before daphne builds its access logger) sends those lines through the `daphne.access`
  logger instead, so they are JSON and masked like the rest.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import re
from collections.abc import Iterator
from typing import Any

from daphne import cli as daphne_cli
from pythonjsonlogger.json import JsonFormatter

# A run of 8–15 digits, optionally written in groups ("1.020.304.050", "300 123 4567",
# "+57-300-123-4567"): documents and phone numbers. Longer runs are ids of other kinds, and
# digits glued to letters are parts of ids too (UUIDs, hashes): left alone.
_DIGITS = re.compile(
    r"(?:(?<![0-9A-Za-z])|(?<=%2[0BCbc]))"  # also after a URL-encoded "+", " " or ","
    r"(?:\+?\d{1,4}(?:[ .\-]\d{3,4}){2,4}|\d{8,15})(?![0-9A-Za-z])"
)
_CONTEXT: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "sophia_log_context", default=None
)
CONTEXT_FIELDS = ("request_id", "clinic", "session", "action", "duration_ms")
# Fields of ours that are never personal data and may hold long digit runs (ids, timings).
_SAFE_EXTRA = {"request_id", "clinic", "duration_ms", "status", "taskName"}
# Attributes every LogRecord has; everything else on a record came from `extra=`.
_RECORD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def _mask_match(match: re.Match) -> str:
    digits = re.sub(r"\D", "", match.group())
    if not 8 <= len(digits) <= 15:
        return match.group()
    return f"…{digits[-3:]}"


def mask(text: str) -> str:
    """Replace every document or phone number in `text` by "…" and its last 3 digits."""
    return _DIGITS.sub(_mask_match, text)


def mask_session(session_id: str) -> str:
    """A session id (the patient's WhatsApp number) as logs may show it."""
    return f"…{session_id[-4:]}" if session_id else ""


class MaskDigits(logging.Filter):
    """Mask documents and phone numbers in the whole record (on every handler)."""

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_sophia_masked", False):
            return True
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not lose the line
            message = f"{record.msg!r} {record.args!r}"
        record.msg = mask(message)
        record.args = None
        if record.exc_info:
            record.exc_text = mask(self._formatter.formatException(record.exc_info))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = mask(record.exc_text)
        if record.stack_info:
            record.stack_info = mask(record.stack_info)
        for name, value in list(vars(record).items()):
            if name in _RECORD_ATTRS or name in _SAFE_EXTRA:
                continue
            if isinstance(value, str):
                setattr(record, name, mask(value))
            elif value is not None and not isinstance(value, bool | int | float):
                # Objects (a request, a dict…) would be written as their str(): mask that.
                setattr(record, name, mask(str(value)))
        record._sophia_masked = True
        return True


class ContextFilter(logging.Filter):
    """Copy the bound context (request id, clinic, session, action…) onto each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in (_CONTEXT.get() or {}).items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


class SophiaJsonFormatter(JsonFormatter):
    """One JSON object per line: timestamp, level, logger, message and the context fields."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # The fields every line has; `extra=` fields and the bound context are added to them.
        kwargs.setdefault("fmt", "{levelname}{name}{message}")
        kwargs.setdefault("style", "{")
        kwargs.setdefault("timestamp", True)  # ISO 8601, UTC
        kwargs.setdefault("rename_fields", {"levelname": "level", "name": "logger"})
        kwargs.setdefault("json_ensure_ascii", False)
        super().__init__(*args, **kwargs)

    def add_fields(self, log_data: dict, record: logging.LogRecord, message_dict: dict) -> None:
        super().add_fields(log_data, record, message_dict)
        log_data.pop("_sophia_masked", None)


def bind(**fields: Any) -> contextvars.Token:
    """Add fields to the log context of this request or task; returns a token for `reset`."""
    current = dict(_CONTEXT.get() or {})
    current.update({k: v for k, v in fields.items() if v is not None})
    return _CONTEXT.set(current)


def reset(token: contextvars.Token) -> None:
    _CONTEXT.reset(token)


def current() -> dict[str, Any]:
    return dict(_CONTEXT.get() or {})


@contextlib.contextmanager
def bound(**fields: Any) -> Iterator[None]:
    token = bind(**fields)
    try:
        yield
    finally:
        reset(token)


# --- daphne's access log -------------------------------------------------------------------------


class AccessLog:
    """daphne's "action logger" interface, writing through Python logging (`daphne.access`)."""

    logger = logging.getLogger("daphne.access")

    def __init__(self, stream: object = None) -> None:
        self.stream = stream  # ignored: the handlers of settings.LOGGING decide where lines go

    def __call__(self, protocol: str, action: str, details: dict) -> None:
        if protocol == "http" and action == "complete":
            self.logger.info(
                '%s "%s %s" %s %s',
                details.get("client"),
                details.get("method"),
                details.get("path"),
                details.get("status"),
                details.get("size"),
                extra={"action": "http.access", "status": details.get("status")},
            )
        elif protocol == "websocket" and action in {
            "connecting",
            "connected",
            "rejected",
            "disconnected",
        }:
            self.logger.info(
                '%s "WS%s %s"',
                details.get("client"),
                action.upper(),
                details.get("path"),
                extra={"action": f"websocket.{action}"},
            )


def route_daphne_access_log() -> None:
    """Make daphne's command line build our AccessLog instead of its stdout writer.

    daphne's CLI looks `AccessLogGenerator` up after loading the ASGI application, so replacing
    it from asgi.py takes effect for `daphne …` as started by compose, the demo and the tests.
    """
    daphne_cli.AccessLogGenerator = AccessLog
