"""Structured JSON logs (structlog). Every line written during a request carries its id.

A last processor masks card numbers and secrets in every value, so nothing sensitive reaches a
log even if some code tries to log it.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any

import structlog

from openpse.domain.redaction import redact

__all__ = ["configure_logging", "get_logger"]


def _redact_processor(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> Mapping[str, Any]:
    redacted: Mapping[str, Any] = redact(dict(event_dict))
    return redacted


def configure_logging(level: str = "INFO", log_file: Path | None = None) -> None:
    stream = open(log_file, "a", buffering=1) if log_file else sys.stderr
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _redact_processor,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.WriteLoggerFactory(file=stream),
        cache_logger_on_first_use=True,
    )


def get_logger(name: str = "openpse") -> Any:
    return structlog.get_logger(name)
