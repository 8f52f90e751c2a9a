"""Timer ticks among the lines of a live source, so open batches go out every second.

A reader cuts a process's batch at ``BATCH_MAX_EVENTS``, on an ``execve`` and on
the exit. A process that makes few syscalls (a miner: a burst at start, then a
few a second) would otherwise keep its open batch for minutes, and the worker
would see nothing of it until it exits. Live readers therefore get their lines
through one of the two functions below, which put ``TICK`` between the lines at
least every ``every_s`` seconds of wall time, whether lines arrive or not; the
readers publish every open batch on each tick (``Batcher.drain``).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Final, TypeVar

#: Seconds between two publications of the open batches of a live source.
FLUSH_EVERY_S: Final = 1.0
#: How often a followed file is polled for new lines once it is at its end.
POLL_S: Final = 0.05
_READ_BYTES = 1 << 16

T = TypeVar("T")


class Tick:
    """The type of ``TICK``: time to publish the open batches."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "TICK"


#: Yielded among the lines when ``every_s`` has passed since the previous tick.
TICK: Final = Tick()
_END = object()


def ticking(items: Iterable[T], every_s: float) -> Iterator[T | Tick]:
    """The items of a blocking iterable, with ``TICK`` at least every ``every_s``.

    A daemon thread reads ``items`` (a pipe, typically) into a queue, so a tick
    comes even while the source has nothing to say. An exception raised by the
    source is raised here, after the items read before it.

    Args:
        items: the source; read in another thread.
        every_s: seconds between ticks.
    """
    q: queue.SimpleQueue[object] = queue.SimpleQueue()
    failure: list[BaseException] = []

    def pump() -> None:
        try:
            for item in items:
                q.put(item)
        except BaseException as exc:  # noqa: BLE001 - handed to the reader
            failure.append(exc)
        finally:
            q.put(_END)

    threading.Thread(target=pump, name="systerns-ticking", daemon=True).start()
    next_tick = time.monotonic() + every_s
    while True:
        now = time.monotonic()
        if now >= next_tick:
            next_tick = now + every_s
            yield TICK
        try:
            item = q.get(timeout=max(next_tick - now, 0.0))
        except queue.Empty:
            continue
        if item is _END:
            break
        yield item  # type: ignore[misc]
    if failure:
        raise failure[0]


def follow_lines(
    path: Path,
    finished: Callable[[], bool],
    *,
    every_s: float | None = FLUSH_EVERY_S,
    poll_s: float = POLL_S,
) -> Iterator[str | Tick]:
    """The lines of a file another process is still writing, as they are written.

    Lines are split on ``\\n`` only and decoded as UTF-8 with replacement, as
    ``producers.trace.iter_trace_file`` reads a finished file, so both give the
    same lines. Reading stops at the end of the file once ``finished()`` is
    true; a file that never appears gives no lines.

    Args:
        path: the file (it may not exist yet).
        finished: true once the writer is done (checked before the last read).
        every_s: seconds between ``TICK`` items; no ticks when None.
        poll_s: pause at the end of the file while the writer runs.
    """
    fh = None
    rest = b""
    next_tick = time.monotonic() + every_s if every_s else None
    try:
        while True:
            done = finished()
            if fh is None and path.exists():
                fh = open(path, "rb")  # noqa: SIM115 - closed in finally
            while fh is not None:
                chunk = fh.read(_READ_BYTES)
                if not chunk:
                    break
                lines = (rest + chunk).split(b"\n")
                rest = lines.pop()
                for raw in lines:
                    yield (raw + b"\n").decode("utf-8", "replace")
                if next_tick is not None and time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + every_s  # type: ignore[operator]
                    yield TICK
            if done:
                break
            if next_tick is not None and time.monotonic() >= next_tick:
                next_tick = time.monotonic() + every_s  # type: ignore[operator]
                yield TICK
            time.sleep(poll_s)
        if rest:
            yield rest.decode("utf-8", "replace")
    finally:
        if fh is not None:
            fh.close()
