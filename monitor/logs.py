"""structlog set-up: JSON lines off a terminal, readable lines on one, secrets redacted."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from monitor.redact import MASK, redact

# Values under these keys are masked whole, whatever they hold.
_SECRET_KEYS = frozenset(
    {"api_key", "authorization", "convai_api_key", "apprise_url", "url_secret", "token", "password"}
)


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: MASK if str(k).lower() in _SECRET_KEYS else _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_scrub(v) for v in value)
    if isinstance(value, BaseException):
        return redact(str(value))
    return value


def redact_processor(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key in list(event_dict):
        if key.lower() in _SECRET_KEYS:
            event_dict[key] = MASK
        else:
            event_dict[key] = _scrub(event_dict[key])
    return event_dict


# The level setup_logging set; None: structlog's default, which prints every level.
_level: int | None = None


def debug_enabled() -> bool:
    """Whether a debug event would be printed: a hot path asks before building one."""
    return _level is None or _level <= logging.DEBUG


def setup_logging(
    level: str = "info", stream: TextIO | None = None, json: bool | None = None
) -> None:
    stream = stream or sys.stderr
    if json is None:
        json = not stream.isatty()
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact_processor,  # last before rendering: it sees everything that will be printed
        renderer,
    ]
    global _level
    _level = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    # Libraries (APScheduler, httpx, alembic) log through stdlib logging: keep their
    # warnings, route them through the same redaction, drop their chatter.
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                redact_processor,
                renderer,
            ],
            foreign_pre_chain=[structlog.stdlib.add_log_level, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    # APScheduler warns once per skipped run; the monitor counts those itself and logs
    # a summary (probe_runs_missed), so only its errors come through.
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    # apprise logs each failed send with the target's address; the delivery job records
    # every attempt itself (redacted), so apprise's own chatter stays out of our output.
    # Its warnings must still reach apprise's per-send capture, which is where a failed
    # delivery's reason comes from (see alerts/delivery.py): silence it by not
    # propagating, not by raising its level.
    apprise_log = logging.getLogger("apprise")
    apprise_log.setLevel(logging.WARNING)
    apprise_log.propagate = False
    if not any(isinstance(h, logging.NullHandler) for h in apprise_log.handlers):
        # Without a handler of its own, logging's last resort would print it raw.
        apprise_log.addHandler(logging.NullHandler())
