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

The columnar event batch (P6) and the agent's record steps (P11) are measured
against ``HEAD_COMMIT``, the last commit before them: its ``streams/app.py``
(one record per agent step, each write sent on its own) and
``schemas/records.py`` read from git, fed v1 records (``batch_to_record_v1``,
what collectors wrote then) and decoding them with v1 as the reader schema
(``apply_for_good("worker-head")``, ``BENCH_BASELINE=head``).
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
#: The last commit before P6 and P11 (docs/performance.md "head" columns).
HEAD_COMMIT = "f8892cd"
_OLD_MODULES = {"events": "core/events.py", "records": "schemas/records.py",
                "app": "streams/app.py"}
_loaded: dict[str, types.ModuleType] = {}


def _git_module(leaf: str, commit: str = BASE_COMMIT) -> types.ModuleType:
    """A module of ``commit`` under ``benchmarks._before.<leaf>`` (or ``_head``).

    At ``BASE_COMMIT`` its imports of ``systerns.core.events`` point at the old
    events module, so the old ``record_to_batch`` builds old ``Syscall``
    dataclasses; at ``HEAD_COMMIT`` it imports the current package.

    Raises:
        SystemExit: the commit is not in this checkout.
    """
    package = "benchmarks._before" if commit == BASE_COMMIT else "benchmarks._head"
    name = f"{package}.{leaf}"
    if name in _loaded:
        return _loaded[name]
    path = _OLD_MODULES[leaf]
    done = subprocess.run(["git", "show", f"{commit}:{path}"], cwd=REPO,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        print(f"baseline: cannot read {path} at {commit}: {done.stderr.strip()}",
              file=sys.stderr)
        raise SystemExit(1)
    source = done.stdout
    if commit == BASE_COMMIT:
        source = source.replace("from systerns.core.events import",
                                "from benchmarks._before.events import")
    if package not in sys.modules:
        sys.modules[package] = types.ModuleType(package)
    module = types.ModuleType(name)
    module.__file__ = f"{commit}:{path}"
    sys.modules[name] = module  # dataclasses look their module up while building
    exec(compile(source, module.__file__, "exec"), module.__dict__)  # noqa: S102 - our own history
    _loaded[name] = module
    return module


def record_to_batch() -> Callable[[dict], Any]:
    """``schemas.records.record_to_batch`` as of ``BASE_COMMIT``."""
    _git_module("events")
    return _git_module("records").record_to_batch  # type: ignore[no-any-return]


def head_record_to_batch() -> Callable[[dict], Any]:
    """``schemas.records.record_to_batch`` as of ``HEAD_COMMIT`` (v1 records only)."""
    module = _git_module("records", HEAD_COMMIT)
    return module.record_to_batch  # type: ignore[no-any-return]


def head_codec(subject: str, version: int | None = None) -> Any:
    """A ``Codec`` as of ``HEAD_COMMIT``: ``event_batch`` read and written as v1."""
    from systerns.schemas.codec import Codec, versions

    if subject != "event_batch":
        return Codec(subject, version)
    codec = Codec(subject, 1)
    codec.reader = versions(subject)[0]
    return codec


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
            worker's spinner; ``worker-head``: the Faust app of ``HEAD_COMMIT``
            (it must be fed v1 records).
    """
    if part == "worker-head":
        # In place of the current module, before anything imports it (both
        # would register the same Prometheus metrics).
        if "systerns.streams.app" in sys.modules:
            raise RuntimeError("systerns.streams.app imported before the swap")
        head = _git_module("app", HEAD_COMMIT)
        head.record_to_batch = head_record_to_batch()
        head.Codec = head_codec
        sys.modules["systerns.streams.app"] = head
        return
    if part != "worker":
        raise ValueError(f"unknown part {part!r}")
    from systerns.cli import worker
    from systerns.streams import app

    app.Sessionizer = sessionizer_class()  # type: ignore[misc]
    app.record_to_batch = record_to_batch()
    worker.build_worker = _build_worker_with_spinner
