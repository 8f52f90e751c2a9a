"""Shared parts of the benchmarks: figures, the report, real input, local servers.

Every figure is printed beside a reference measured in the same run on the same
machine, and the ratio of the two; absolute numbers on a shared 2-core machine
move with its load, ratios much less. The last line a script prints is one JSON
object holding every figure (``tests/unit/test_benchmarks_smoke.py`` reads it).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("SYSTERNS_SHARED_DATA", REPO.parent / "shared" / "data"))
SCAP_DIR = SHARED / "scap"


def _lab_dir() -> Path:
    """The lab corpus to replay.

    ``BENCH_LAB_DIR`` when set, else ``var/lab``, else the first ``var/lab*``
    by name that has a manifest (``systerns lab --out var/lab2``).
    """
    if os.environ.get("BENCH_LAB_DIR"):
        return Path(os.environ["BENCH_LAB_DIR"]).absolute()
    default = REPO / "var" / "lab"
    built = sorted(m.parent for m in (REPO / "var").glob("lab*/manifest.json"))
    return default if (default / "manifest.json").is_file() or not built else built[0]


LAB_DIR = _lab_dir()
MODEL_BASE = REPO / "models"
MODEL_NAME = "systerns"
#: Scratch space for generated replicas and logs of the servers we start. (Not a
#: SYSTERNS_ variable: settings refuse unknown ones.)
SCRATCH = Path(os.environ.get("BENCH_SCRATCH_DIR",
                              Path(tempfile.gettempdir()) / "systerns-bench"))
DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
# TensorFlow's C++ start-up banner is noise in a benchmark's output; the model
# server inherits this too.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@dataclass(frozen=True, slots=True)
class Figure:
    """One measured number and the reference it is compared with.

    Attributes:
        name: dotted name, stable across runs (``collector.scap.events_per_s``).
        value: the measurement.
        unit: unit of ``value`` and ``reference_value``.
        reference: what the reference is (measured in the same run).
        reference_value: the reference's measurement, in ``unit``.
        goal: the goal from issue 7, as text (``ratio >= 0.80``), or "".
        note: how it was measured, input size, spread.
    """

    name: str
    value: float
    unit: str
    reference: str
    reference_value: float
    goal: str = ""
    note: str = ""

    @property
    def ratio(self) -> float:
        """``value / reference_value`` (nan when the reference is 0)."""
        if not self.reference_value:
            return math.nan
        return self.value / self.reference_value


@dataclass
class Report:
    """The figures of one benchmark run, printed as a table and as JSON."""

    benchmark: str
    small: bool
    input: dict[str, object] = field(default_factory=dict)
    figures: list[Figure] = field(default_factory=list)
    extra: dict[str, object] = field(default_factory=dict)
    machine_start: dict[str, object] = field(default_factory=lambda: machine())
    started: float = field(default_factory=time.monotonic)

    def add(self, figure: Figure) -> Figure:
        """Record a figure and print it at once (long runs show progress)."""
        self.figures.append(figure)
        print(format_figure(figure), flush=True)
        return figure

    def as_dict(self) -> dict[str, object]:
        """Everything measured, JSON-ready."""
        return {
            "benchmark": self.benchmark,
            "small": self.small,
            "machine": self.machine_start
            | {"loadavg_end": os.getloadavg(),
               "wall_s": round(time.monotonic() - self.started, 1)},
            "input": self.input,
            "figures": [
                dataclasses.asdict(f) | {"ratio": _finite(f.ratio)}
                for f in self.figures
            ],
            **self.extra,
        }

    def emit(self) -> None:
        """Print the summary table, then the JSON line (always the last line)."""
        print()
        print(f"== {self.benchmark} ({'small' if self.small else 'full'} run) ==")
        for key, value in self.input.items():
            print(f"  input.{key}: {value}")
        for f in self.figures:
            print(format_figure(f))
        print(json.dumps(self.as_dict(), sort_keys=True, default=str), flush=True)


def _finite(x: float) -> float | None:
    # Six significant digits: a small ratio keeps its precision (rounding to
    # decimal places made 0.0123 up to 0.4% off).
    return None if math.isnan(x) or math.isinf(x) else float(f"{x:.6g}")


def format_figure(f: Figure) -> str:
    """One human line: value, reference, ratio, goal."""
    goal = f"  goal {f.goal}" if f.goal else ""
    return (f"{f.name:<46} {_num(f.value):>12} {f.unit:<10} "
            f"| {f.reference}: {_num(f.reference_value)} "
            f"| ratio {f.ratio:.3f}{goal}")


def _num(x: float) -> str:
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 1:
        return f"{x:.2f}"
    return f"{x:.4f}"


def machine() -> dict[str, object]:
    """What the numbers were measured on, and how busy it was at the start."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    return {
        **code_version(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "mem_gb": round(mem_kb / 1e6, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_start": os.getloadavg(),
    }


def code_version() -> dict[str, object]:
    """Which code was measured: the import location, commit, uncommitted files.

    The work tree is shared and the editable install can be repointed by other
    runs (a fresh-clone CI run did so during this work), so every report says
    where ``systerns`` was imported from.
    """
    import systerns.core

    source = Path(systerns.core.__file__).resolve().parent.parent
    out: dict[str, object] = {"systerns_from": str(source)}
    try:
        head = subprocess.run(["git", "-C", str(source), "rev-parse", "--short",
                               "HEAD"], capture_output=True, text=True, check=True)
        status = subprocess.run(["git", "-C", str(source), "status", "--porcelain",
                                 "--", "core", "producers", "streams", "schemas",
                                 "serving", "cli"],
                                capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return out
    out["git_head"] = head.stdout.strip()
    out["uncommitted"] = sorted(line[3:] for line in status.stdout.splitlines())
    return out


def installed_tree() -> Path:
    """Where a new Python process imports ``systerns`` from, right now.

    Asked of a fresh interpreter, because the servers the benchmarks start are
    fresh interpreters, and the editable install can change under a run.
    """
    out = subprocess.run(
        [sys.executable, "-c", "import importlib.util as u; "
         "print(u.find_spec('systerns.core').origin)"],
        capture_output=True, text=True, check=False)
    origin = out.stdout.strip()
    return Path(origin).resolve().parent.parent if origin else Path("?")


def require_own_tree() -> None:
    """Exit unless new processes import ``systerns`` from this checkout.

    XXX(#7): ``scripts/install.sh`` run from another clone (the fresh-clone CI
    run) repoints the shared editable install at that clone; servers started
    then run other code, and fail once the clone is deleted. The benchmarks
    refuse to measure in that state rather than report such figures.
    """
    tree = installed_tree()
    if tree != REPO:
        print(f"systerns is installed from {tree}, not from {REPO}: the shared "
              "editable install was repointed (scripts/install.sh in another "
              "clone). Rerun when `pip install -e .` points at this checkout.",
              file=sys.stderr)
        raise SystemExit(1)


def quiet_logs() -> None:
    """structlog at WARNING: per-capture INFO lines would swamp the figures."""
    from systerns.core.logs import configure

    configure(level="WARNING")


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation; nan when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def rss_bytes(pid: int | None = None) -> int:
    """Resident set size of a process (this one by default), from /proc."""
    status = Path(f"/proc/{pid or os.getpid()}/status").read_text()
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """User plus system CPU time of a process (or one of its threads), from /proc."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    after = Path(path).read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(after[11]) + int(after[12])) / ticks


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each live thread of a process, by thread id."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out[int(task.name)] = cpu_seconds(pid, int(task.name))
        except (OSError, ValueError):
            continue
    return out


# --- real input -------------------------------------------------------------


def capture_paths() -> list[Path]:
    """Every capture under the shared ``scap/`` folder, largest first."""
    if not SCAP_DIR.is_dir():
        raise SystemExit(f"real captures not found at {SCAP_DIR}")
    return sorted(SCAP_DIR.rglob("*.scap"), key=lambda p: -p.stat().st_size)


def lab_runs(label: str | None = None) -> list[dict]:
    """Runs of the lab corpus whose strace recording is present, manifest order."""
    manifest = LAB_DIR / "manifest.json"
    if not manifest.is_file():
        raise SystemExit(f"no lab corpus at {LAB_DIR} (run `systerns lab`)")
    runs = json.loads(manifest.read_text())["runs"]
    out = [r for r in runs if (LAB_DIR / r["trace"]).is_file()]
    if label is not None:
        out = [r for r in out if r["label"] == label]
    return out


def trace_path(run: dict) -> Path:
    """The strace file of a lab run."""
    return LAB_DIR / run["trace"]


def trace_batches(run: dict, host: str) -> list:
    """A lab run's recording parsed as the strace collector does (errors dropped)."""
    from systerns.core.events import EventBatch
    from systerns.producers.trace import parse_trace_file

    return [b for b in parse_trace_file(trace_path(run), host=host,
                                        root_pid=run.get("root_pid"),
                                        cwd=run.get("cwd"))
            if isinstance(b, EventBatch)]


def publishable(batches: list) -> bool:
    """Whether the collector's encoder takes every one of these batches.

    Recordings it refuses are left out and listed (before commit 4a1157a,
    unsigned 64-bit syscall results from the miner made ``Publisher.send``
    raise instead).
    """
    from systerns.core.errors import SchemaError
    from systerns.schemas.codec import Codec
    from systerns.schemas.records import batch_to_record

    codec = Codec("event_batch")
    try:
        for b in batches:
            codec.encode(batch_to_record(b))
    except (SchemaError, OverflowError):
        return False
    return True


def publishable_runs(runs: list[dict]) -> tuple[list[dict], list[str]]:
    """Lab runs the current collector can publish, and the ids of the others."""
    good, bad = [], []
    for run in runs:
        (good if publishable(trace_batches(run, "check")) else bad).append(run)
    return good, [r["run_id"] for r in bad]


def capture_batches(path: Path, host: str) -> list:
    """A capture read as the sysdig collector does; [] when sysdig cannot read it."""
    from systerns.core.errors import SourceError
    from systerns.core.events import EventBatch
    from systerns.producers.sysdig import read_capture

    try:
        return [b for b in read_capture(path, host) if isinstance(b, EventBatch)]
    except SourceError:
        return []


def replicate(batch, replica: int, shift_ns: int):
    """A replica of a real batch: another host, the same events ``shift_ns`` later.

    Replicas stand for the same real activity seen on ``replica`` more machines;
    nothing is invented. The host name makes their process keys distinct.
    """
    from systerns.core.events import EventBatch, Syscall

    info = dataclasses.replace(batch.process,
                               host=f"{batch.process.host}-r{replica:04d}")
    events = tuple(Syscall(e.ts_ns + shift_ns, e.tid, e.name, e.res, e.arg)
                   for e in batch.events)
    return EventBatch(info, events, batch.source)


def span_ns(batches: list) -> int:
    """Event-time span of some batches (first to last event)."""
    stamps = [e.ts_ns for b in batches for e in b.events]
    return (max(stamps) - min(stamps)) if stamps else 0


# --- broker -----------------------------------------------------------------


def broker_or_exit(bootstrap: str) -> str:
    """The bootstrap address when a broker answers there; exit 1 otherwise."""
    from systerns.cli.stack import port_open

    host, port = bootstrap.split(",")[0].rsplit(":", 1)
    if not port_open(int(port), host):
        print(f"no Kafka broker at {bootstrap}: run scripts/kafka.sh start",
              file=sys.stderr)
        raise SystemExit(1)
    return bootstrap


@contextmanager
def fresh_topics(bootstrap: str, kinds: tuple[str, ...], partitions: int = 3,
                 ) -> Iterator[dict[str, str]]:
    """Topics created for this run only (``bench.<kind>.<id>``), deleted after."""
    from confluent_kafka.admin import AdminClient, NewTopic

    suffix = uuid.uuid4().hex[:8]
    names = {k: f"bench.{k}.{suffix}" for k in kinds}
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    futures = admin.create_topics([NewTopic(n, num_partitions=partitions,
                                            replication_factor=1)
                                   for n in names.values()])
    for fut in futures.values():
        fut.result(timeout=30)
    try:
        yield names
    finally:
        for fut in admin.delete_topics(list(names.values())).values():
            try:
                fut.result(timeout=30)
            except Exception as exc:  # noqa: BLE001 - clean-up must not hide results
                print(f"could not delete a benchmark topic: {exc}", file=sys.stderr)


def bench_settings(bootstrap: str, **topics: str):
    """Settings naming this run's topics; the process environment is not read."""
    from systerns.core.settings import Settings

    return Settings.from_env({}, bootstrap_servers=bootstrap, host="bench-node",
                             **topics)


# --- model ------------------------------------------------------------------


def model_versions(base: Path = MODEL_BASE) -> list[int]:
    """Exported versions of the model under ``base``.

    The layout test of ``serving.export.list_versions``, without importing
    TensorFlow into benchmarks that only start a server.
    """
    root = Path(base) / MODEL_NAME
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir()
                  if p.name.isdigit() and (p / "saved_model.pb").is_file())


def wait_for_model(timeout_s: float, base: Path = MODEL_BASE,
                   poll_s: float = 15.0) -> bool:
    """Poll until an exported version appears under ``base``; False on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        if model_versions(base):
            return True
        if time.monotonic() >= deadline:
            return False
        print(f"waiting for an exported model under {base / MODEL_NAME} ...",
              file=sys.stderr, flush=True)
        time.sleep(min(poll_s, max(deadline - time.monotonic(), 0.1)))


def untrained_model_base(where: Path) -> Path:
    """Export the production architecture, untrained, into ``where``.

    For ``--small`` runs on a machine without a trained model: latency and
    throughput depend on the graph's shape, not on its weights. Verdicts from
    it mean nothing; the benchmarks say so when they use it.
    """
    from systerns.serving.export import export_model
    from systerns.serving.model import DEFAULT_MALICIOUS_THRESHOLD, build_model

    if model_versions(where):
        return where
    labels = sorted({r["label"] for r in lab_runs()}) + ["unknown"]
    export_model(build_model(len(labels)), tuple(labels), where, MODEL_NAME,
                 metadata={"data": "untrained, benchmark plumbing only"},
                 version=1, threshold=DEFAULT_MALICIOUS_THRESHOLD)
    return where


def pick_model(small: bool, wait_s: float) -> tuple[Path, str]:
    """The model base to serve and a label saying which model it is.

    The trained model under ``models/`` when it exists or appears within
    ``wait_s``; for small runs without one, an untrained export of the same
    architecture in the scratch folder.
    """
    if model_versions() or (not small and wait_for_model(wait_s)):
        return MODEL_BASE, f"trained v{model_versions()[-1]}"
    if not small:
        raise SystemExit(f"no exported model under {MODEL_BASE / MODEL_NAME}")
    return untrained_model_base(SCRATCH / "untrained-model"), "untrained (same shape)"


def sysdig_or_exit() -> str:
    """Path of the sysdig binary; exit 1 when it is not installed."""
    exe = shutil.which("sysdig")
    if exe is None:
        print("sysdig is not installed (Debian package 'sysdig')", file=sys.stderr)
        raise SystemExit(1)
    return exe


def top_functions(stats: pstats.Stats, top: int) -> list[dict]:
    """Print and return the ``top`` functions by own time, with their share."""
    table = stats.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in table.values()) or 1.0
    out = []
    for (file, line, func), (_cc, ncalls, own, cum, _callers) in sorted(
            table.items(), key=lambda kv: -kv[1][2])[:top]:
        where = f"{Path(file).parent.name}/{Path(file).name}:{line}" if line else file
        out.append({"function": f"{where}({func})", "calls": ncalls,
                    "own_s": round(own, 3), "own_share": round(own / total, 3),
                    "cum_s": round(cum, 3)})
    print(f"\ntop {top} functions by own time:")
    for row in out:
        print(f"  {row['own_share']:6.1%}  {row['own_s']:8.3f} s  {row['calls']:>9}  "
              f"{row['function']}")
    return out


def count_lines(argv: list[str]) -> int:
    """Lines a command prints on stdout."""
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                          check=False)
    return proc.stdout.count(b"\n")
