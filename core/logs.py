"""structlog set-up: console lines locally, JSON in deployments.

``SYSTERNS_LOG_FORMAT=json`` switches to one JSON object per line;
``SYSTERNS_LOG_LEVEL`` sets the level (default INFO). Logs go to stderr so
stdout stays free for alerts and summaries.
"""

from __future__ import annotations

import logging
import os
import sys

import structlog


def configure(level: str | None = None, fmt: str | None = None) -> None:
    """Configure structlog and the standard library's root logger once."""
    level_name = (level or os.environ.get("SYSTERNS_LOG_LEVEL", "INFO")).upper()
    fmt = fmt or os.environ.get("SYSTERNS_LOG_FORMAT", "console")
    numeric = getattr(logging, level_name, logging.INFO)
    renderer = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=sys.stderr,
                        format="%(levelname)s %(name)s %(message)s")
