"""``systerns worker`` for benchmark runs: optionally profiled, or as before P2-P8.

``BENCH_PROFILE_OUT=FILE``: the first SIGRTMIN starts cProfile on the worker's
main thread (the Faust event loop: consumer, agents, table, producer), the
second stops it and writes the stats to FILE, so start-up and shutdown stay
out. The model calls run in executor threads and are not profiled here
(``benchmarks.model`` measures them).

``BENCH_BASELINE=1``: the code the hot-path changes replaced
(``benchmarks.baseline``) is swapped in before the worker starts;
``BENCH_BASELINE=head``: the worker of ``baseline.HEAD_COMMIT`` (before the
columnar records and the agent's record steps; feed it v1 records).

    BENCH_BASELINE=1 python -m benchmarks.worker_process [worker options]
"""

from __future__ import annotations

import cProfile
import os
import signal
import sys


def install_profiler(out: str) -> None:
    """Toggle cProfile on SIGRTMIN (mode's worker claims SIGINT/TERM/USR1/USR2)."""
    prof = cProfile.Profile()
    running = [False]

    def toggle(_signum: int, _frame: object) -> None:
        if running[0]:
            prof.disable()
            prof.dump_stats(out)
        else:
            prof.enable()
        running[0] = not running[0]

    signal.signal(signal.SIGRTMIN, toggle)


def main(argv: list[str]) -> int:
    if os.environ.get("BENCH_PROFILE_OUT"):
        install_profiler(os.environ["BENCH_PROFILE_OUT"])
    if os.environ.get("BENCH_BASELINE") in ("1", "head"):
        from benchmarks import baseline

        baseline.apply_for_good(
            "worker" if os.environ["BENCH_BASELINE"] == "1" else "worker-head")

    from systerns.cli.worker import main as worker_main
    from systerns.core.logs import configure

    configure()
    return worker_main(argv)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
