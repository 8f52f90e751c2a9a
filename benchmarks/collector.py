"""Collector throughput: events/s published to Kafka against sysdig's own rate.

Three figures, each with a reference measured in the same run:

* per real capture: ``read_capture`` → ``Publisher`` on a fresh topic of the
  real broker, against ``sysdig -r FILE -j -p <OUTPUT_FORMAT> > /dev/null`` on
  the same file (the collector runs that same sysdig, so its rate is the
  ceiling); rounds alternate the two so load changes hit both;
* lab strace recordings: ``parse_trace_file`` → ``Publisher``, against
  sysdig's steady rate (what a sysdig-fed collector would have to keep up with);
* a large input: the JSON lines of every readable capture, replicated (see
  ``build_replicas``) up to ``--replica-events`` lines, piped through ``cat``
  into the collector's reader and published, against sysdig's steady rate
  (start-up excluded, see ``sysdig_steady_rate``) measured before and after.

Rates count input events (sysdig lines, strace lines); the published syscalls
(exit halves only) are printed beside them.

    python -m benchmarks.collector [--small] [--rounds N] [--replica-events N]
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import json
import pstats
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import orjson

from benchmarks.common import (
    DEFAULT_BOOTSTRAP,
    SCRATCH,
    Figure,
    Report,
    bench_settings,
    broker_or_exit,
    capture_paths,
    fresh_topics,
    lab_runs,
    percentile,
    publishable_runs,
    quiet_logs,
    require_own_tree,
    sysdig_or_exit,
    top_functions,
    trace_path,
)

#: pids, ppids and tids of replica r are shifted by r times this.
PID_STRIDE = 65_536
#: Event-time gap between two captures inside one replica.
GAP_NS = 1_000_000_000
#: Captures large enough for a per-capture figure (events).
MIN_FIGURE_EVENTS = 1_000
GOAL = "ratio >= 0.80"


def sysdig_cmd(exe: str, scap: Path) -> list[str]:
    """The reader's exact sysdig command for a capture."""
    from systerns.producers.sysdig import OUTPUT_FORMAT

    return [exe, "-r", str(scap), "-j", "-p", OUTPUT_FORMAT]


@dataclass
class Cost:
    """Wall and CPU seconds of some runs (CPU: this process, and its children)."""

    wall_s: float = 0.0
    self_cpu_s: float = 0.0
    child_cpu_s: float = 0.0

    def __iadd__(self, other: Cost) -> Cost:
        self.wall_s += other.wall_s
        self.self_cpu_s += other.self_cpu_s
        self.child_cpu_s += other.child_cpu_s
        return self


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


@contextmanager
def costing(into: Cost) -> Iterator[None]:
    """Add the wall time and CPU time of the ``with`` block to ``into``."""
    wall = time.perf_counter()
    own, kids = _cpu(resource.RUSAGE_SELF), _cpu(resource.RUSAGE_CHILDREN)
    yield
    into += Cost(time.perf_counter() - wall, _cpu(resource.RUSAGE_SELF) - own,
                 _cpu(resource.RUSAGE_CHILDREN) - kids)


def time_sysdig(exe: str, scap: Path) -> float:
    """Seconds sysdig takes to print a capture in the collector's format."""
    cost = Cost()
    run_sysdig(exe, scap, cost)
    return cost.wall_s


def run_sysdig(exe: str, scap: Path, cost: Cost) -> None:
    """sysdig printing a capture in the collector's format to /dev/null."""
    with costing(cost):
        subprocess.run(sysdig_cmd(exe, scap), stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)


def time_publish(publisher, items, source: str, cost: Cost | None = None) -> float:
    """Seconds to publish an item stream and have the broker acknowledge it."""
    cost = cost if cost is not None else Cost()
    before = cost.wall_s
    with costing(cost):
        publisher.publish(items, source=source)
        remaining = publisher.producer.flush(120)
    if remaining:
        raise SystemExit(f"{remaining} messages not delivered after 120 s")
    return cost.wall_s - before


def readable_captures(exe: str) -> dict[Path, int]:
    """Captures sysdig reads to the end, with their event counts, largest first.

    Empty captures and ones sysdig fails on (the truncated test capture) are
    left out: they measure start-up and error paths, not throughput.
    """
    out = {}
    for c in capture_paths():
        proc = subprocess.run(sysdig_cmd(exe, c), stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, check=False)
        n = proc.stdout.count(b"\n")
        if proc.returncode == 0 and n:
            out[c] = n
    return out


def measure_captures(report: Report, publisher, exe: str, events: dict[Path, int],
                     rounds: int) -> None:
    """Per-capture figures, then all captures together, sysdig as reference.

    A third variant runs the collector as it was before P1, with sysdig
    printing the enter halves too (``read_capture(filtered=False)``), after
    checking both give the same batches. CPU time is kept beside wall time: the
    collector's own CPU per event against sysdig's says whether, given a free
    core for each, the collector keeps up with sysdig whatever else the
    machine runs.
    """
    from systerns.producers.sysdig import ReadStats, read_capture

    captures = list(events)
    costs = {v: {c: Cost() for c in captures} for v in ("sysdig", "current",
                                                         "before")}
    syscalls = dict.fromkeys(captures, 0)
    same = True
    for c in captures:
        unfiltered = comparable(read_capture(c, "bench-node", filtered=False))
        same = same and unfiltered == comparable(read_capture(c, "bench-node"))

    def run(variant: str, c: Path) -> None:
        if variant == "sysdig":
            run_sysdig(exe, c, costs[variant][c])
            return
        stats = ReadStats()
        time_publish(publisher, read_capture(c, "bench-node", stats,
                                             filtered=variant == "current"),
                     str(c), costs[variant][c])
        if variant == "current":
            syscalls[c] = stats.syscalls

    order = ["sysdig", "current", "before"]
    for r in range(rounds):
        for c in captures:
            # Rotate the order, so a load spike does not always hit one variant.
            for variant in order[r % 3:] + order[: r % 3]:
                run(variant, c)

    def rate(variant: str, c: Path | None = None) -> float:
        picked = [c] if c else captures
        return (sum(events[x] for x in picked) * rounds
                / sum(costs[variant][x].wall_s for x in picked))

    for c in captures:
        if events[c] < MIN_FIGURE_EVENTS:
            continue
        before = rate("before", c)
        report.add(Figure(
            f"collector.scap.{c.stem}.events_per_s", rate("current", c), "events/s",
            "sysdig -r -j -p (same file)", rate("sysdig", c), GOAL,
            f"{events[c]:,} events ({syscalls[c]:,} syscalls published) x "
            f"{rounds} rounds, sysdig start-up on both sides; before P1: "
            f"{before:,.0f}/s ({before / rate('sysdig', c):.2f} of sysdig)"))
    report.add(Figure(
        "collector.scap.all.events_per_s", rate("current"), "events/s",
        "sysdig -r -j -p (same files)", rate("sysdig"), GOAL,
        f"{len(captures)} readable captures, {sum(events.values()):,} events "
        f"x {rounds} rounds"))
    # CPU per event on the captures large enough to count, sysdig's start-up
    # CPU (timed on the captures of under 100 events) taken out of its side.
    large = [c for c in captures if events[c] >= MIN_FIGURE_EVENTS]
    tiny = [costs["sysdig"][c].child_cpu_s / rounds for c in captures
            if events[c] < 100]
    startup_cpu = percentile(tiny, 50) if tiny else 0.0
    n_large = sum(events[c] for c in large) * rounds
    own = sum(costs["current"][c].self_cpu_s for c in large)
    ref_cpu = sum(costs["sysdig"][c].child_cpu_s for c in large) - (
        startup_cpu * len(large) * rounds)
    if large:
        report.add(Figure(
            "collector.scap.large.events_per_cpu_s", n_large / own, "events/cpu-s",
            "sysdig alone, per its CPU second", n_large / max(ref_cpu, 1e-9),
            "ratio >= 1.00",
            f"{len(large)} captures of >= {MIN_FIGURE_EVENTS} events; the "
            f"collector's own CPU (Python and librdkafka threads) {own:.2f} s, "
            f"sysdig's {ref_cpu:.2f} s without its start-up ({startup_cpu * 1e3:.0f}"
            " ms CPU a run). Ratio >= 1: given a free core each, the collector "
            "is not the bottleneck"))
    report.add(Figure(
        "collector_vs_before.scap.all.events_per_s", rate("current"), "events/s",
        "collector before P1 (sysdig prints enter halves too, same run)",
        rate("before"), "",
        "sysdig prints exit halves only (producers.sysdig.SYSDIG_FILTER); same "
        f"batches: {'yes' if same else 'NO'}; before P1 against sysdig -r -j -p: "
        f"{rate('before') / rate('sysdig'):.2f}"))
    report.extra["collector_before_identical"] = same
    report.input["captures"] = {str(c.relative_to(c.parents[1])): n
                                for c, n in events.items()}


def comparable(items) -> list:
    """A reader's output with dead letters as (class, reason, detail) tuples.

    Exceptions compare by identity; the same bad line read twice must count as
    the same output.
    """
    from systerns.core.errors import InputError

    return [(type(x).__name__, x.reason, x.detail) if isinstance(x, InputError)
            else x for x in items]


def sysdig_steady_rate(exe: str, events: dict[Path, int], rounds: int) -> float:
    """sysdig's events/s once started, from the same captures.

    Each readable capture is printed ``rounds`` times. The captures of under
    100 events time sysdig's fixed start-up (about 40 ms here); the larger ones,
    less that start-up each, give the per-event rate. Piped or replicated input
    has no start-up, so this is the fair reference for it.
    """
    tiny, big_s, big_events = [], 0.0, 0
    for _ in range(rounds):
        for c, n in events.items():
            took = time_sysdig(exe, c)
            if n < 100:
                tiny.append(took)
            elif n >= MIN_FIGURE_EVENTS:
                big_s += took
                big_events += n
    startup = percentile(tiny, 50) if tiny else 0.0
    runs = big_events and sum(1 for n in events.values()
                              if n >= MIN_FIGURE_EVENTS) * rounds
    return big_events / max(big_s - runs * startup, 1e-9)


def measure_traces(report: Report, publisher, runs: list[dict], rounds: int,
                   sysdig_rate: float) -> None:
    """The strace path on the lab recordings, against sysdig's steady rate."""
    from systerns.producers.trace import TraceStats, iter_trace_file, parse_trace_file

    lines = syscalls = 0
    read_s = col_s = 0.0
    for r in range(rounds):
        started = time.perf_counter()
        for run in runs:
            for _ in iter_trace_file(trace_path(run)):
                lines += 1
        read_s += time.perf_counter() - started
        stats = TraceStats()

        def items(host: str = f"bench-lab-{r}", stats: TraceStats = stats):
            # One stream, as a collector tracing commands one after another.
            for run in runs:
                yield from parse_trace_file(trace_path(run), host=host,
                                            root_pid=run.get("root_pid"),
                                            cwd=run.get("cwd"), stats=stats)

        col_s += time_publish(publisher, items(), "lab")
        syscalls += stats.syscalls
    report.add(Figure(
        "collector.strace.lines_per_s", lines / col_s, "lines/s",
        "sysdig steady rate (same run)", sysdig_rate, "",
        f"{len(runs)} lab recordings, {lines // rounds:,} lines "
        f"({syscalls // rounds:,} syscalls) x {rounds} rounds; reading the lines "
        f"unparsed runs at {lines / read_s:,.0f}/s"))
    report.input["strace_runs"] = len(runs)
    report.input["strace_lines"] = lines // rounds


def capture_lines(exe: str, captures: list[Path]) -> list[list[dict]]:
    """The JSON events of each capture, as sysdig prints them for the collector."""
    out = []
    for c in captures:
        proc = subprocess.run(sysdig_cmd(exe, c), stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, check=False)
        objs = [orjson.loads(line) for line in proc.stdout.splitlines() if line]
        if objs:
            out.append(objs)
    return out


def _shift_container(cid: object, replica: int) -> object:
    if not isinstance(cid, str) or cid in ("", "host"):
        return cid
    return hashlib.sha1(f"{cid}/{replica}".encode()).hexdigest()[:12]  # noqa: S324 - an id, not security


def build_replicas(exe: str, captures: list[Path], target_events: int,
                   path: Path) -> dict:
    """Write replicas of the real captures' JSON lines until ``target_events``.

    Replica ``r`` holds every event of every readable capture, once. Its pids,
    ppids and tids are shifted by ``r * PID_STRIDE``, its container ids (other
    than ``host``) rehashed with ``r``, and its times moved so that each capture
    follows the previous one and each replica the previous replica. Everything
    else (event types, paths, arguments, results, order) is the real capture's.

    Returns:
        A description of the file (events, replicas, bytes, sources).
    """
    sources = capture_lines(exe, captures)
    starts = [min(o["evt.rawtime"] for o in objs) for objs in sources]
    spans = [max(o["evt.rawtime"] for o in objs) - s for objs, s in
             zip(sources, starts, strict=True)]
    period = sum(spans) + GAP_NS * len(spans)
    per_replica = sum(len(objs) for objs in sources)
    base = starts[0]
    written = replica = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb", buffering=1 << 20) as out:
        while written < target_events:
            offset = base + replica * period
            for objs, start, span in zip(sources, starts, spans, strict=True):
                shift = offset - start
                pid_shift = replica * PID_STRIDE
                for o in objs:
                    row = dict(o)
                    row["evt.rawtime"] = o["evt.rawtime"] + shift
                    row["evt.num"] = (o.get("evt.num") or 0) + replica * per_replica
                    for k in ("proc.pid", "thread.tid"):
                        if isinstance(o.get(k), int):
                            row[k] = o[k] + pid_shift
                    if isinstance(o.get("proc.ppid"), int) and o["proc.ppid"] > 1:
                        row["proc.ppid"] = o["proc.ppid"] + pid_shift
                    row["container.id"] = _shift_container(o.get("container.id"),
                                                           replica)
                    out.write(orjson.dumps(row))
                    out.write(b"\n")
                    written += 1
                offset += span + GAP_NS
            replica += 1
    return {"events": written, "replicas": replica, "bytes": path.stat().st_size,
            "events_per_replica": per_replica, "sources": len(sources)}


def measure_replicas(report: Report, settings, exe: str, events: dict[Path, int],
                     target_events: int, rounds: int, keep: bool,
                     profile_lines: int) -> None:
    """The large input: replicas piped into the reader and published."""
    from systerns.producers.publisher import Publisher
    from systerns.producers.sysdig import ReadStats, read_lines

    captures = list(events)
    path = SCRATCH / f"collector-replicas-{target_events}.jsonl"
    desc_path = path.with_suffix(".json")
    if path.is_file() and desc_path.is_file():
        desc = json.loads(desc_path.read_text())
    else:
        print(f"building {target_events:,} replicated events in {path} ...",
              file=sys.stderr, flush=True)
        desc = build_replicas(exe, captures, target_events, path)
        desc_path.write_text(json.dumps(desc))
    report.input["replicas"] = desc | {"file": str(path)}

    before = sysdig_steady_rate(exe, events, rounds)
    publisher = Publisher(settings)
    stats = ReadStats()
    started = time.perf_counter()
    cat = subprocess.Popen(["cat", str(path)], stdout=subprocess.PIPE)
    assert cat.stdout is not None
    try:
        publisher.publish(read_lines(cat.stdout, "bench-node", stats), source=str(path))
    finally:
        cat.stdout.close()
        cat.wait()
    pub = publisher.close(300)
    elapsed = time.perf_counter() - started
    after = sysdig_steady_rate(exe, events, rounds)
    if pub.events_delivered != pub.events_sent or pub.delivery_errors:
        raise SystemExit(f"delivery incomplete: {pub.as_dict()}")
    report.add(Figure(
        "collector.replicas.events_per_s", stats.lines / elapsed, "events/s",
        "sysdig steady rate on the source captures", (before + after) / 2, GOAL,
        f"{stats.lines:,} events, {pub.events_delivered:,} syscalls in "
        f"{pub.batches_delivered:,} batches delivered in {elapsed:.1f} s; sysdig "
        f"before {before:,.0f}/s, after {after:,.0f}/s"))

    if profile_lines:
        report.extra["hotspots"] = profile_reader(path, profile_lines)
    if not keep:
        path.unlink(missing_ok=True)
        desc_path.unlink(missing_ok=True)


def profile_reader(path: Path, n_lines: int, top: int = 12) -> list[dict]:
    """cProfile of reading, batching and encoding ``n_lines`` (no Kafka)."""
    from systerns.core.events import EventBatch
    from systerns.producers.sysdig import ReadStats, read_lines
    from systerns.schemas.codec import Codec
    from systerns.schemas.records import batch_to_record

    codec = Codec("event_batch")
    with open(path, "rb") as fh:
        lines = [fh.readline() for _ in range(n_lines)]

    def work() -> None:
        for item in read_lines(lines, "bench-node", ReadStats()):
            if isinstance(item, EventBatch):
                codec.encode(batch_to_record(item))
                item.process.key.encode()

    prof = cProfile.Profile()
    prof.runcall(work)
    return top_functions(pstats.Stats(prof), top)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.collector",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--small", action="store_true",
                   help="one round on one capture and a few recordings (CI)")
    p.add_argument("--rounds", type=int, help="alternating rounds (default 5)")
    p.add_argument("--replica-events", type=int,
                   help="events in the replicated input (default 10,000,000)")
    p.add_argument("--bootstrap", default=DEFAULT_BOOTSTRAP)
    p.add_argument("--keep-replicas", action="store_true",
                   help=f"keep the replica file in {SCRATCH} for the next run")
    p.add_argument("--profile-lines", type=int,
                   help="cProfile the reader on this many replica lines (0 = off)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    require_own_tree()
    quiet_logs()
    rounds = args.rounds or (1 if args.small else 5)
    target = args.replica_events or (30_000 if args.small else 10_000_000)
    profile_lines = (args.profile_lines if args.profile_lines is not None
                     else (0 if args.small else 300_000))
    exe = sysdig_or_exit()
    bootstrap = broker_or_exit(args.bootstrap)
    report = Report("collector", args.small)

    events = readable_captures(exe)
    # Small: the largest capture, and the smallest to time sysdig's start-up.
    figure_events = (dict(list(events.items())[:1] + list(events.items())[-1:])
                     if args.small else events)
    runs, unpublishable = publishable_runs(lab_runs())
    runs = runs[:: max(len(runs) // 12, 1)] if args.small else runs
    report.input["strace_runs_left_out"] = unpublishable

    from systerns.producers.publisher import Publisher

    with fresh_topics(bootstrap, ("events", "deadletter")) as topics:
        settings = bench_settings(bootstrap, events_topic=topics["events"],
                                  deadletter_topic=topics["deadletter"])
        publisher = Publisher(settings)
        measure_captures(report, publisher, exe, figure_events, rounds)
        steady = sysdig_steady_rate(exe, events, rounds)
        measure_traces(report, publisher, runs, rounds, steady)
        stats = publisher.close(120)
        if stats.events_delivered != stats.events_sent or stats.delivery_errors:
            raise SystemExit(f"delivery incomplete: {stats.as_dict()}")
        measure_replicas(report, settings, exe, events, target, rounds,
                         args.keep_replicas, profile_lines)
    report.emit()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
