"""``systerns worker`` builds a Faust worker that leaves the root logger alone."""

from __future__ import annotations

import logging

import pytest

from systerns.cli.worker import build_worker


@pytest.fixture
def root_logger():
    """The root logger at WARNING with one handler, restored afterwards."""
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    root.handlers[:] = [logging.NullHandler()]
    root.setLevel(logging.WARNING)
    yield root
    root.setLevel(saved[0])
    root.handlers[:] = saved[1]


def test_worker_has_no_spinner_and_keeps_the_root_logger_at_warning(root_logger):
    faust = pytest.importorskip("faust")
    app = faust.App("systerns-unit-spinner", broker="kafka://127.0.0.1:1")
    worker = build_worker(app, "WARNING")

    worker.on_setup_root_logger(root_logger, logging.WARNING)

    assert worker.spinner is None
    assert root_logger.level == logging.WARNING
    assert not [h for h in root_logger.handlers
                if type(h).__name__ == "SpinnerHandler"]
