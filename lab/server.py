"""Runs the lab's local HTTP server (``python -m http.server`` on 127.0.0.1)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import structlog

from systerns.core.errors import SourceError

log = structlog.get_logger(__name__)
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def _wait_for_port(port: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


@contextmanager
def lab_http_server(directory: Path, *, start_timeout_s: float = 10.0) -> Iterator[int]:
    """Serve ``directory`` on 127.0.0.1 for the duration of the block.

    The server is stopped by its PID (SIGTERM, then SIGKILL after 5 s).

    Yields:
        The port it listens on.

    Raises:
        SourceError: the server did not accept connections in time.
    """
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "http.server",
            str(port),
            "--bind",
            LOOPBACK,
            "--directory",
            str(directory),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        if not _wait_for_port(port, start_timeout_s):
            raise SourceError(f"lab HTTP server did not start on port {port}")
        log.info("lab_http_server_started", pid=proc.pid, port=port)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.info("lab_http_server_stopped", pid=proc.pid, port=port)
