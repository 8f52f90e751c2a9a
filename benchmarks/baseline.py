"""The pipeline as it was before the hot-path changes, for before/after figures.

The benchmarks measure the product against this baseline in the same run, so
load on the shared machine hits both sides alike. Nothing here is a copy of
product code:

* core (P2-P5): the per-event ``Sessionizer`` that
  ``tests/unit/test_sessions_reference.py`` keeps as the reference the product
  must agree with (no runs, no memos, same session state), and
  ``record_to_batch`` building ``Syscall`` frozen dataclasses, both read from
  git at ``BASE_COMMIT`` when first used;
* collector (P1): ``read_capture(filtered=False)``, a product option;
* worker (P8): Faust's progress spinner left on (``build_worker`` without the
  change).

``apply_for_good("worker")`` swaps the core and worker parts into the Faust
worker process (``benchmarks.worker_process`` with ``BENCH_BASELINE=1``).
"""

from __future__ import annotations

import subprocess
import sys
import types
from collections.abc import Callable
from typing import Any

from benchmarks.common import REPO

#: The last commit before P1-P8 (docs/performance.md "before" columns).
BASE_COMMIT = "bc9fe5a"
_OLD_MODULES = {"events": "core/events.py", "records": "schemas/records.py"}
_loaded: dict[str, types.ModuleType] = {}


def _git_module(leaf: str) -> types.ModuleType:
    """A module of ``BASE_COMMIT`` under ``benchmarks._before.<leaf>``.

    Its imports of ``systerns.core.events`` point at the old events module, so
    the old ``record_to_batch`` builds old ``Syscall`` dataclasses.

    Raises:
        SystemExit: the commit is not in this checkout.
    """
    if leaf in _loaded:
        return _loaded[leaf]
    path = _OLD_MODULES[leaf]
    done = subprocess.run(["git", "show", f"{BASE_COMMIT}:{path}"], cwd=REPO,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        print(f"baseline: cannot read {path} at {BASE_COMMIT}: {done.stderr.strip()}",
              file=sys.stderr)
        raise SystemExit(1)
    source = done.stdout.replace("from systerns.core.events import",
                                 "from benchmarks._before.events import")
    name = f"benchmarks._before.{leaf}"
    if "benchmarks._before" not in sys.modules:
        sys.modules["benchmarks._before"] = types.ModuleType("benchmarks._before")
    module = types.ModuleType(name)
    module.__file__ = f"{BASE_COMMIT}:{path}"
    sys.modules[name] = module  # dataclasses look their module up while building
    exec(compile(source, module.__file__, "exec"), module.__dict__)  # noqa: S102 - our own history
    _loaded[leaf] = module
    return module


def record_to_batch() -> Callable[[dict], Any]:
    """``schemas.records.record_to_batch`` as of ``BASE_COMMIT``."""
    _git_module("events")
    return _git_module("records").record_to_batch  # type: ignore[no-any-return]


def sessionizer_class() -> type:
    """The per-event reference ``Sessionizer`` of the unit tests."""
    from tests.unit.test_sessions_reference import ReferenceSessionizer

    return ReferenceSessionizer


def _build_worker_with_spinner(app: Any, loglevel: str) -> Any:
    from faust.worker import Worker

    return Worker(app, loglevel=loglevel, quiet=True)


def apply_for_good(part: str) -> None:
    """Swap the baseline into this process for good (a worker process).

    Args:
        part: ``worker``: the Faust app's sessionizer and decoder, and the
            worker's spinner.
    """
    if part != "worker":
        raise ValueError(f"unknown part {part!r}")
    from systerns.cli import worker
    from systerns.streams import app

    app.Sessionizer = sessionizer_class()  # type: ignore[misc]
    app.record_to_batch = record_to_batch()
    worker.build_worker = _build_worker_with_spinner
