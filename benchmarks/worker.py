"""Worker throughput: syscall events/s per worker process, topic to verdicts.

Figures, each with a reference measured in the same run:

* core, in process: Avro decode → ``record_to_batch`` → ``Sessionizer.ingest``
  → ``vectorize_many`` on every 64 judgements (the worker's model batch),
  against Avro decoding alone of the same records, against the code the
  hot-path changes replaced (``benchmarks.baseline``), checked to give
  identical sessions, and against the same core on v1 (row) records as of
  ``baseline.HEAD_COMMIT`` (before the columnar records, P6);
* memory per open session: tracemalloc and RSS growth with N open sessions,
  against the JSON size of the same sessions (what the changelog stores);
* Kafka: the real ``systerns worker`` (Faust) with ``systerns serve``, started
  by ``cli.stack.LocalStack`` on fresh topics; events produced after a warm-up
  session came back; timed until every verdict the core predicts for that input
  is on the verdicts topic; against one plain consumer reading and decoding the
  same topic, and against the worker of ``baseline.HEAD_COMMIT`` (one record
  per agent step, v1 records). Also events per CPU-second of the worker
  process, which load on the shared machine does not change.

Input: every readable capture and every lab recording, each moved to its own
slot on one timeline, then replicated to more hosts (``common.replicate``) up
to ``--events``; ``--group`` replicas run side by side, as hosts of a fleet do.

    python -m benchmarks.worker [--small] [--events N] [--kafka-events N]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import (
    DEFAULT_BOOTSTRAP,
    REPO,
    SCRATCH,
    Figure,
    Report,
    broker_or_exit,
    capture_batches,
    capture_paths,
    lab_runs,
    pick_model,
    publishable,
    quiet_logs,
    replicate,
    require_own_tree,
    rss_bytes,
    thread_cpu,
    top_functions,
    trace_batches,
)

GOAL_RATE = ">= 200,000 events/s per worker process"
#: Judgements per model call in the worker (``streams.app.JUDGE_BATCH``).
JUDGE_BATCH = 64
#: Event-time gap between two sources on the timeline.
GAP_NS = 1_000_000_000
#: The worker's idle gap for the Kafka run: long, so no wall-clock sweep closes
#: a session mid-run and the verdicts are exactly those the core predicts.
KAFKA_IDLE_S = 3600.0


# --- input ------------------------------------------------------------------


def source_batches(small: bool) -> tuple[list, list[str]]:
    """Real batches: the captures, then the lab recordings, on one timeline.

    Each source keeps its own timing; sources are placed one after another
    (``GAP_NS`` apart) so the stream's event time only moves forward.

    Returns:
        The batches, and the ids of recordings left out (see
        ``common.publishable``).
    """
    sources, left_out = [], []
    captures = capture_paths()[:3] if small else capture_paths()
    for i, path in enumerate(captures):
        sources.append(capture_batches(path, f"cap{i:02d}"))
    runs = lab_runs()
    for run in runs[:: max(len(runs) // 20, 1)] if small else runs:
        batches = trace_batches(run, f"lab-{run['run_id']}")
        if publishable(batches):
            sources.append(batches)
        else:
            left_out.append(run["run_id"])
    out = []
    clock = 0
    for batches in sources:
        stamps = [e.ts_ns for b in batches for e in b.events]
        if not stamps:
            continue
        if not clock:
            clock = min(stamps)
        shift = clock - min(stamps)
        out += [replicate(b, 0, shift) for b in batches]
        clock += max(stamps) - min(stamps) + GAP_NS
    return out, left_out


def replicated(base: list, target_events: int, group: int) -> Iterator:
    """Replicas of the base stream until ``target_events``, ``group`` at a time.

    Replicas of one group run at the same event time (1 ms apart), their
    batches interleaved; the next group follows the previous one in time.
    """
    stamps = [e.ts_ns for b in base for e in b.events]
    period = max(stamps) - min(stamps) + GAP_NS
    emitted = 0
    for g in itertools.count():
        streams = [
            (replicate(b, g * group + k, g * period + k * 1_000_000) for b in base)
            for k in range(group)
        ]
        for row in itertools.zip_longest(*streams):
            for b in row:
                if b is None:
                    continue
                yield b
                emitted += len(b)
                if emitted >= target_events:
                    return


def encode_stream(batches, v1: bool = False) -> tuple[list[tuple[bytes, bytes]], int]:
    """Records as the collector publishes them (key, Avro value); event count.

    Args:
        v1: as collectors before the columnar records wrote them (v1 rows).
    """
    from systerns.schemas.codec import Codec
    from systerns.schemas.records import batch_to_record, batch_to_record_v1

    codec = Codec("event_batch", 1 if v1 else None)
    to_record = batch_to_record_v1 if v1 else batch_to_record
    out, n = [], 0
    for b in batches:
        out.append((b.process.key.encode(), codec.encode(to_record(b))))
        n += len(b)
    return out, n


def as_v1(records: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The same records re-encoded as v1 (rows), for the code before P6."""
    from systerns.schemas.codec import Codec
    from systerns.schemas.records import batch_to_record_v1, record_to_batch

    codec, old = Codec("event_batch"), Codec("event_batch", 1)
    return [(k, old.encode(batch_to_record_v1(record_to_batch(codec.decode(v)))))
            for k, v in records]


# --- core in process ----------------------------------------------------------


class CoreRun:
    """The worker's per-record work, without Kafka and without the model."""

    def __init__(self, policy, before: bool = False, head: bool = False) -> None:
        from benchmarks import baseline
        from systerns.core.sessions import Sessionizer
        from systerns.schemas import records as conv
        from systerns.schemas.codec import Codec

        self.codec = baseline.head_codec("event_batch") if head else Codec(
            "event_batch")
        sessionizer = baseline.sessionizer_class() if before else Sessionizer
        self.to_batch = (baseline.record_to_batch() if before
                         else baseline.head_record_to_batch() if head
                         else conv.record_to_batch)
        self.sessions = sessionizer({}, policy)
        self.pending: list = []
        self.judgements = 0
        self.vectors = 0.0

    def feed(self, records: list[tuple[bytes, bytes]]) -> None:
        """Fold records into sessions; vectorize judgements 64 at a time."""
        from systerns.core import features

        decode = self.codec.decode
        to_batch = self.to_batch
        ingest = self.sessions.ingest
        pending = self.pending
        for _key, value in records:
            pending += ingest(to_batch(decode(value)))
            if len(pending) >= JUDGE_BATCH:
                self.vectors += float(
                    features.vectorize_many([j.session for j in pending]).sum())
                self.judgements += len(pending)
                pending.clear()

    def finish(self) -> None:
        """Vectorize what is left (the worker would on its next wait)."""
        from systerns.core import features

        if self.pending:
            self.vectors += float(
                features.vectorize_many([j.session for j in self.pending]).sum())
            self.judgements += len(self.pending)
            self.pending.clear()


def decode_only(records: list[tuple[bytes, bytes]]) -> None:
    """The reference: decode every record and nothing else."""
    from systerns.schemas.codec import Codec

    decode = Codec("event_batch").decode
    for _key, value in records:
        decode(value)


def measure_core(report: Report, records: list, n_events: int, chunks: int,
                 with_before: bool, v1_records: list | None = None,
                 with_head: bool = False) -> CoreRun:
    """Core rate against decode-only, the baselines, chunk by chunk.

    ``v1_records`` are the same records as v1 rows, what the code before P6
    reads: the baseline (``with_before``) and the core as of
    ``baseline.HEAD_COMMIT`` (``with_head``) run on them in the same rotation.
    """
    from systerns.core.sessions import SessionPolicy

    policy = SessionPolicy(idle_s=KAFKA_IDLE_S)
    current = CoreRun(policy)
    before = CoreRun(policy, before=True)
    head = CoreRun(policy, head=True)
    runs = {"current": current, "before": before, "head": head}
    seconds = {"decode": 0.0, "current": 0.0, "before": 0.0, "head": 0.0}
    size = max(len(records) // chunks, 1)

    def run(variant: str, i: int) -> None:
        chunk = (v1_records if variant in ("head", "before") else records)[i:i + size]
        started = time.perf_counter()
        if variant == "decode":
            decode_only(chunk)
        else:
            runs[variant].feed(chunk)
        seconds[variant] += time.perf_counter() - started

    order = ["decode", "current"] + (["before"] if with_before else []) + (
        ["head"] if with_head else [])
    for k, i in enumerate(range(0, len(records), size)):
        # Rotate the order per chunk: no variant always runs after another.
        for variant in order[k % len(order):] + order[: k % len(order)]:
            gc.collect()
            run(variant, i)
    current.finish()
    if with_head:
        head.finish()
        same = (head.judgements == current.judgements
                and head.sessions.store == current.sessions.store)
        report.add(Figure(
            "worker.core_vs_head.events_per_s", n_events / seconds["current"],
            "events/s", "core on v1 records before P6 (HEAD_COMMIT, same run)",
            n_events / seconds["head"], GOAL_RATE,
            f"columnar (v2) records against v1 rows; identical sessions: "
            f"{'yes' if same else 'NO'}"))
        report.extra["head_identical"] = same
    rate = n_events / seconds["current"]
    report.add(Figure(
        "worker.core.events_per_s", rate, "events/s", "Avro decode only",
        n_events / seconds["decode"], GOAL_RATE,
        f"{n_events:,} events in {len(records):,} records, "
        f"{current.judgements:,} judgements vectorized; no model call"))
    if with_before:
        before.finish()
        same = (before.judgements == current.judgements
                and abs(before.vectors - current.vectors) < 1e-3 * max(
                    abs(current.vectors), 1.0)
                and before.sessions.store == current.sessions.store)
        report.add(Figure(
            "worker.core_vs_before.events_per_s", rate, "events/s",
            "core before P2-P5 (benchmarks.baseline, same run)",
            n_events / seconds["before"], GOAL_RATE,
            f"identical sessions and features: {'yes' if same else 'NO'}"))
        report.extra["before_identical"] = same
    return current


def profile_core(records: list, policy, top: int = 14) -> list[dict]:
    """cProfile of the core on some records: where its time goes."""
    import pstats

    run = CoreRun(policy)
    prof = cProfile.Profile()
    prof.runcall(run.feed, records)
    return top_functions(pstats.Stats(prof), top)


def measure_memory(report: Report, base: list, n_sessions: int) -> float:
    """Bytes per open session: tracemalloc and RSS growth, JSON size as reference.

    Each session is opened by the first batch of a real process (one that does
    not exit in it), replicated to ``n_sessions`` distinct processes.
    """
    from systerns.core.events import EXIT_TYPES
    from systerns.core.sessions import Sessionizer, SessionPolicy

    firsts, seen = [], set()
    for b in base:
        if b.process.key in seen:
            continue
        seen.add(b.process.key)
        if not any(e.name in EXIT_TYPES for e in b.events) and len(b) >= 20:
            firsts.append(b)
    openers = [replicate(firsts[i % len(firsts)], 1 + i // len(firsts), 0)
               for i in range(n_sessions)]
    policy = SessionPolicy(idle_s=KAFKA_IDLE_S, max_sessions=10 * n_sessions)

    def fill() -> Sessionizer:
        s = Sessionizer({}, policy)
        for b in openers:
            s.ingest(b)
        return s

    gc.collect()
    rss_before = rss_bytes()
    kept = fill()
    gc.collect()
    rss_per = (rss_bytes() - rss_before) / len(kept.store)
    del kept
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    kept = fill()
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    traced = sum(s.size_diff for s in after.compare_to(before, "filename"))
    per = traced / len(kept.store)
    json_per = sum(len(json.dumps(s)) for s in kept.store.values()) / len(kept.store)
    events = sum(s["n_events"] for s in kept.store.values()) / len(kept.store)
    report.add(Figure(
        "worker.memory.bytes_per_open_session", per, "bytes",
        "JSON size of the same sessions", json_per, "",
        f"tracemalloc, {len(kept.store):,} open sessions of real processes "
        f"({events:.0f} events each on average); RSS grew {rss_per:,.0f} B/session"))
    return per


# --- through Kafka ------------------------------------------------------------


class VerdictCounter(threading.Thread):
    """Counts verdicts on a topic as they arrive, apart from warm-up ones."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(daemon=True)
        from confluent_kafka import Consumer

        self.consumer = Consumer({
            "bootstrap.servers": bootstrap, "group.id": f"bench-{topic}",
            "auto.offset.reset": "earliest", "enable.auto.commit": False,
            "log_level": 0})
        self.consumer.subscribe([topic])
        self.count = 0
        self.warmup = 0
        self.last_at = 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                for msg in self.consumer.consume(1000, 0.2):
                    if msg.error():
                        continue
                    if (msg.key() or b"").startswith(b"warmup"):
                        self.warmup += 1
                    else:
                        self.count += 1
                        self.last_at = time.perf_counter()
        finally:
            self.consumer.close()


def produce(settings, records: list[tuple[bytes, bytes]]) -> None:
    """Send pre-encoded records with the collector's producer settings."""
    from systerns.producers.publisher import Publisher

    producer = Publisher(settings).producer
    for key, value in records:
        while True:
            try:
                producer.produce(settings.events_topic, value=value, key=key)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    if producer.flush(120):
        raise SystemExit("events not delivered within 120 s")


def consume_decode_rate(bootstrap: str, topic: str, n_records: int,
                        n_events: int) -> float:
    """Reference: one confluent-kafka consumer reading and decoding the topic."""
    from confluent_kafka import Consumer

    from systerns.schemas.codec import Codec

    decode = Codec("event_batch").decode
    consumer = Consumer({"bootstrap.servers": bootstrap,
                         "group.id": f"bench-ref-{time.time_ns()}",
                         "auto.offset.reset": "earliest",
                         "enable.auto.commit": False, "log_level": 0})
    consumer.subscribe([topic])
    seen = 0
    started = None
    deadline = time.monotonic() + 300
    try:
        while seen < n_records and time.monotonic() < deadline:
            for msg in consumer.consume(1000, 0.5):
                if msg.error():
                    continue
                if started is None:
                    started = time.perf_counter()
                if not (msg.key() or b"").startswith(b"warmup"):
                    decode(msg.value())
                    seen += 1
    finally:
        consumer.close()
    if started is None or seen < n_records:
        raise SystemExit(f"reference consumer read {seen} of {n_records} records")
    return n_events / (time.perf_counter() - started)


def warmup_records(v1: bool = False) -> list[tuple[bytes, bytes]]:
    """A real lab run (a process that exits) under a host named ``warmup``."""
    run = next(r for r in lab_runs() if r["label"] == "sha256sum")
    records, _ = encode_stream(trace_batches(run, "warmup"), v1=v1)
    return records


def worker_totals(log: Path) -> dict:
    """The totals the worker prints on shutdown (``cli/worker.py``), or {}."""
    for line in reversed(log.read_text(errors="replace").splitlines()):
        if '"worker": {' in line and "{" in line:
            try:
                return json.loads(line[line.index("{"):])["worker"]
            except (ValueError, KeyError):
                continue
    return {}


@dataclass(frozen=True, slots=True)
class KafkaRun:
    """What one worker run through Kafka measured."""

    variant: str
    events: int
    seconds: float
    cpu_s: float
    event_loop_cpu_s: float
    verdicts: int
    expected: int
    rss_ready: int
    rss_end: int
    produce_s: float
    worker_events: object


#: CPUs this benchmark could use when it started (pinning narrows its own set).
_START_CPUS = frozenset(os.sched_getaffinity(0))


def pin_worker(stack: object, worker_pid: int) -> dict[str, list[int]]:
    """Give the worker a core of its own: its threads on the last CPU, this
    benchmark process and the model server on the others (the broker, which
    this run may not have started, is left where it is). Returns the masks."""
    cpus = sorted(_START_CPUS)
    if len(cpus) < 2:
        return {}
    own, rest = {cpus[-1]}, set(cpus[:-1])
    for task in Path(f"/proc/{worker_pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), own)
    others = [os.getpid()] + [p.pid for n, p in stack.procs.items()  # type: ignore[attr-defined]
                              if n != "worker" and p.poll() is None]
    for pid in others:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                os.sched_setaffinity(int(task.name), rest)
            except OSError:
                pass
    return {"worker": sorted(own), "others": sorted(rest)}


def run_kafka(bootstrap: str, records: list, n_events: int, expected: int,
              model_base: Path, variant: str = "current",
              profile_to: Path | None = None) -> KafkaRun:
    """Produce into a warmed-up worker and time it until every verdict is out.

    Args:
        variant: ``current`` runs ``systerns worker``; ``before`` and ``head``
            run it with ``benchmarks.baseline`` swapped in
            (``benchmarks.worker_process``).
        profile_to: profile the worker's event loop during the timed part.
    """
    from systerns.cli.stack import LocalStack
    from systerns.core.settings import Settings

    require_own_tree()
    log_dir = SCRATCH / "logs"
    stack = LocalStack(bootstrap=bootstrap, idle_s=KAFKA_IDLE_S,
                       model_base=model_base, log_dir=log_dir)
    log_path = log_dir / f"worker-{stack.run_id}.log"
    counter = None
    try:
        stack.start_broker()
        stack.create_topics()
        stack.start_model_server()
        if variant == "current" and profile_to is None:
            stack.start_worker()
        else:
            env = stack.env() | {"BENCH_BASELINE": {"before": "1", "head": "head"}.get(
                variant, "0")}
            if profile_to is not None:
                profile_to.unlink(missing_ok=True)
                env["BENCH_PROFILE_OUT"] = str(profile_to)
            log = open(log_path, "wb")  # noqa: SIM115 - closed with the process
            stack.procs["worker"] = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.worker_process"], env=env,
                stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        worker = stack.procs["worker"]
        settings = Settings.from_env(stack.env())
        counter = VerdictCounter(bootstrap, stack.topics["verdicts"])
        counter.start()

        produce(settings, warmup_records(v1=variant in ("head", "before")))
        deadline = time.monotonic() + 180
        while counter.warmup == 0:
            if worker.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"worker not ready; see {log_path}")
            time.sleep(0.2)
        time.sleep(1.0)
        if os.environ.get("BENCH_PIN_WORKER") == "1":
            pinned = pin_worker(stack, worker.pid)
            print(f"pinned: {pinned}", file=sys.stderr, flush=True)
        rss_ready, cpu_ready = rss_bytes(worker.pid), thread_cpu(worker.pid)
        if profile_to is not None:
            os.kill(worker.pid, signal.SIGRTMIN)

        started = time.perf_counter()
        produce(settings, records)
        produce_s = time.perf_counter() - started
        last_count, last_change = -1, time.monotonic()
        while counter.count < expected:
            if counter.count != last_count:
                last_count, last_change = counter.count, time.monotonic()
            if worker.poll() is not None or time.monotonic() - last_change > 180:
                break
            time.sleep(0.2)
        elapsed = counter.last_at - started
        cpu_end, rss_end = thread_cpu(worker.pid), rss_bytes(worker.pid)
        if profile_to is not None:
            os.kill(worker.pid, signal.SIGRTMIN)
            deadline = time.monotonic() + 30
            while not profile_to.is_file() and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(1.0)
        stack.stop_process("worker")
    finally:
        if counter is not None:
            counter.stop.set()
        stack.stop()
    # The servers must have run this checkout from start to end.
    require_own_tree()

    return KafkaRun(
        variant=variant, events=n_events, seconds=elapsed,
        cpu_s=sum(cpu_end.values()) - sum(cpu_ready.get(t, 0.0) for t in cpu_end),
        event_loop_cpu_s=cpu_end.get(worker.pid, 0.0) - cpu_ready.get(worker.pid, 0.0),
        verdicts=counter.count, expected=expected, rss_ready=rss_ready,
        rss_end=rss_end, produce_s=produce_s,
        worker_events=worker_totals(log_path).get("events", "?"))


def measure_kafka(report: Report, bootstrap: str, records: list, n_events: int,
                  model: tuple[Path, str], rounds: int, with_before: bool,
                  traced_per_session: float, big_records: list | None = None,
                  big_events: int = 0, v1_records: list | None = None,
                  with_head: bool = False) -> None:
    """Current (and baseline) worker through Kafka, alternating, plus reference.

    With ``big_records`` (the same events cut into larger records, see
    ``rebatch``) the current worker also runs on those, in the same rotation.
    """
    model_base, model_label = model
    expected, open_sessions = predicted_verdicts(records)
    reference = reference_rate(bootstrap, records, n_events)
    # The code before P6 reads v1 rows only.
    old = v1_records if v1_records is not None else records
    inputs = {"current": (records, expected), "before": (old, expected),
              "head": (old, expected)}
    variants = ["current", "before"] if with_before else ["current"]
    if with_head:
        variants.append("head")
    if big_records:
        inputs["big"] = (big_records, predicted_verdicts(big_records)[0])
        variants.append("big")
    runs: dict[str, list[KafkaRun]] = {v: [] for v in variants}
    for r in range(rounds):
        for v in variants[r % len(variants):] + variants[: r % len(variants)]:
            recs, exp = inputs[v]
            run = run_kafka(bootstrap, recs, n_events, exp, model_base,
                            "current" if v == "big" else v)
            runs[v].append(run)
            print(f"  kafka run {v}: {run.events / run.seconds:,.0f} events/s, "
                  f"{run.verdicts}/{run.expected} verdicts", file=sys.stderr)

    def rate(v: str) -> float:
        return sum(x.events for x in runs[v]) / sum(x.seconds for x in runs[v])

    def cpu_rate(v: str) -> float:
        return sum(x.events for x in runs[v]) / sum(x.cpu_s for x in runs[v])

    def describe(v: str) -> str:
        done = all(x.verdicts >= x.expected for x in runs[v])
        return (f"{n_events:,} events in {len(inputs[v][0]):,} records x {rounds} "
                f"runs, {inputs[v][1]:,} verdicts each "
                f"({'all out' if done else 'INCOMPLETE'}), wall "
                f"{', '.join(f'{x.seconds:.1f}' for x in runs[v])} s; model "
                f"{model_label}; worker counted {runs[v][-1].worker_events} events")

    cur = runs["current"]
    report.add(Figure(
        "worker.kafka.events_per_s", rate("current"), "events/s",
        "one consumer reading + decoding the topic", reference, GOAL_RATE,
        describe("current")))
    report.add(Figure(
        "worker.kafka.events_per_cpu_s", cpu_rate("current"), "events/cpu-s",
        "same, per wall second", rate("current"), GOAL_RATE,
        f"worker CPU {sum(x.cpu_s for x in cur):.1f} s (user+sys), event-loop "
        f"thread {sum(x.event_loop_cpu_s for x in cur):.1f} s of it"))
    last = cur[-1]
    report.add(Figure(
        "worker.kafka.rss_per_open_session",
        (last.rss_end - last.rss_ready) / max(open_sessions, 1), "bytes",
        "tracemalloc bytes/session in process", traced_per_session, "",
        f"{open_sessions:,} sessions open at the end; RSS {last.rss_ready / 1e6:.0f} "
        f"MB when ready, {last.rss_end / 1e6:.0f} MB at the end (upper bound: "
        "includes consumer and producer buffers)"))
    baselines = (
        ("head", with_head, "worker before P6 and P11",
         "HEAD_COMMIT, v1 records, same run"),
        ("before", with_before, "worker before P2-P5, P8",
         "benchmarks.baseline, same run"),
    )
    for variant, wanted, who, how in baselines:
        if not wanted:
            continue
        report.add(Figure(
            f"worker_vs_{variant}.kafka.events_per_s", rate("current"), "events/s",
            f"{who} ({how})", rate(variant), GOAL_RATE,
            f"{variant}: " + describe(variant)))
        report.add(Figure(
            f"worker_vs_{variant}.kafka.events_per_cpu_s", cpu_rate("current"),
            "events/cpu-s", f"{who} (same run)", cpu_rate(variant), GOAL_RATE,
            f"{variant}: worker CPU {sum(x.cpu_s for x in runs[variant]):.1f} s, "
            f"event loop {sum(x.event_loop_cpu_s for x in runs[variant]):.1f} s"))
    if big_records:
        report.add(Figure(
            f"worker_records{big_events}.kafka.events_per_cpu_s", cpu_rate("big"),
            "events/cpu-s", "current worker, current records", cpu_rate("current"),
            GOAL_RATE, f"current code; records of up to {big_events} events; "
                       + describe("big")))
        report.add(Figure(
            f"worker_records{big_events}.kafka.events_per_s", rate("big"),
            "events/s", "current worker, current records", rate("current"),
            GOAL_RATE, "same runs, per wall second"))


def rebatch(batches, max_events: int) -> Iterator:
    """The same events in records of up to ``max_events``, cut as the collector cuts.

    Consecutive batches of one process image are merged; a merged record is
    still cut at the process's exit and before a successful ``execve``, and
    leaves when it is cut, as a collector with a larger batch limit would send
    it. Per-process order is unchanged.
    """
    from systerns.core.events import EXEC_TYPES, EXIT_TYPES, EventBatch

    open_: dict[str, tuple] = {}
    for b in batches:
        key = b.process.key
        cur = open_.get(key)
        starts_exec = b.events[0].name in EXEC_TYPES and b.events[0].res >= 0
        if cur is not None and (starts_exec or cur[0].comm != b.process.comm
                                or cur[0].exe != b.process.exe
                                or len(cur[1]) + len(b) > max_events):
            yield EventBatch(cur[0], tuple(cur[1]), cur[2])
            cur = None
        if cur is None:
            cur = (b.process, [], b.source)
        cur = (b.process, cur[1] + list(b.events), b.source)
        last = b.events[-1]
        if last.name in EXIT_TYPES and last.tid == b.process.pid:
            yield EventBatch(cur[0], tuple(cur[1]), cur[2])
            open_.pop(key, None)
        else:
            open_[key] = cur
    for info, events, source in open_.values():
        yield EventBatch(info, tuple(events), source)


def profile_kafka(report: Report, bootstrap: str, records: list,
                  model: tuple[Path, str], variant: str) -> None:
    """A separate, profiled worker run: where the event loop spends its time."""
    prof_path = SCRATCH / f"worker-{variant}.prof"
    expected, _ = predicted_verdicts(records)
    run = run_kafka(bootstrap, records, sum_events(records), expected, model[0],
                    variant, profile_to=prof_path)
    report.extra[f"worker_{variant}_profile_run"] = {
        "events": run.events, "seconds": round(run.seconds, 1),
        "cpu_s": round(run.cpu_s, 1),
        "event_loop_cpu_s": round(run.event_loop_cpu_s, 1),
        "verdicts": run.verdicts, "expected": run.expected}
    print(f"\nworker event loop, {variant} code:")
    report.extra[f"worker_{variant}_hotspots"] = worker_hotspots(prof_path)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.worker",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--small", action="store_true", help="a few seconds (CI)")
    p.add_argument("--pin", action="store_true",
                   help="through Kafka, give the worker a CPU of its own (the "
                        "benchmark and model server on the others)")
    p.add_argument("--events", type=int, help="events for the core (default 10M)")
    p.add_argument("--kafka-events", type=int,
                   help="events for the Kafka runs (default: as --events)")
    p.add_argument("--sessions", type=int, help="open sessions for the memory figure")
    p.add_argument("--group", type=int, default=8, help="replicas side by side")
    p.add_argument("--chunks", type=int, help="alternation chunks for the core")
    p.add_argument("--bootstrap", default=DEFAULT_BOOTSTRAP)
    p.add_argument("--kafka-rounds", type=int,
                   help="worker runs per variant, alternating (default 2)")
    p.add_argument("--no-kafka", action="store_true", help="core and memory only")
    p.add_argument("--record-events", type=int, default=0,
                   help="also run the worker on the same events in records of up "
                        "to N events (e.g. 1024)")
    p.add_argument("--no-before", action="store_true",
                   help="skip the baseline (code before P1-P8) figures")
    p.add_argument("--no-head", action="store_true",
                   help="skip the figures against HEAD_COMMIT (before P6, P11)")
    p.add_argument("--profile", action="store_true",
                   help="cProfile the core, and the Faust worker on a separate run")
    p.add_argument("--model-wait-s", type=float, default=1800.0,
                   help="how long to wait for an exported model (full runs)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    require_own_tree()
    if args.pin:
        os.environ["BENCH_PIN_WORKER"] = "1"
    quiet_logs()
    small = args.small
    target = args.events or (60_000 if small else 10_000_000)
    kafka_target = args.kafka_events or (20_000 if small else target)
    report = Report("worker", small)

    base, left_out = source_batches(small)
    print(f"encoding {target:,} events of replicated input ...", file=sys.stderr,
          flush=True)
    records, n_events = encode_stream(replicated(base, target, args.group))
    report.input.update({
        "base_events": sum(len(b) for b in base), "base_batches": len(base),
        "events": n_events, "records": len(records),
        "events_per_record": round(n_events / len(records), 1),
        "replica_group": args.group, "recordings_left_out": left_out})

    v1_records = None if args.no_head and args.no_before else as_v1(records)
    current = measure_core(report, records, n_events,
                           args.chunks or (2 if small else 10),
                           not args.no_before, v1_records, not args.no_head)
    traced = measure_memory(report, base, args.sessions or (500 if small else 20_000))
    if args.profile:
        from systerns.core.sessions import SessionPolicy

        report.extra["core_hotspots"] = profile_core(
            records[: max(len(records) // 10, 1)], SessionPolicy(idle_s=KAFKA_IDLE_S))
    del current

    if not args.no_kafka:
        bootstrap = broker_or_exit(args.bootstrap)
        model = pick_model(small, args.model_wait_s)
        kafka_records, kafka_n = records, n_events
        if kafka_target != n_events:
            kafka_records, kafka_n = encode_stream(
                replicated(base, kafka_target, args.group))
        report.input["kafka_events"] = kafka_n
        big = None
        if args.record_events:
            big, _ = encode_stream(rebatch(replicated(base, kafka_target, args.group),
                                           args.record_events))
            report.input["big_records"] = len(big)
        # Each variant starts a model server and a worker: small runs keep one.
        with_before = not (args.no_before or small)
        with_head = not (args.no_head or small)
        kafka_v1 = None
        if with_before or with_head:
            kafka_v1 = (v1_records if kafka_records is records and v1_records
                        else as_v1(kafka_records))
        measure_kafka(report, bootstrap, kafka_records, kafka_n, model,
                      args.kafka_rounds or (1 if small else 2),
                      with_before, traced, big, args.record_events or 0,
                      kafka_v1, with_head)
        if args.profile:
            part = kafka_records[: max(len(kafka_records) // 4, 1)]
            profile_kafka(report, bootstrap, part, model, "current")
            old_part = (kafka_v1 or [])[: len(part)]
            if with_head:
                profile_kafka(report, bootstrap, old_part, model, "head")
            if with_before:
                profile_kafka(report, bootstrap, old_part, model, "before")
    report.emit()
    return 0


def sum_events(records: list[tuple[bytes, bytes]]) -> int:
    """Events in some encoded records."""
    from systerns.schemas.codec import Codec

    from systerns.schemas.records import record_to_batch

    decode = Codec("event_batch").decode
    return sum(len(record_to_batch(decode(v))) for _k, v in records)


def predicted_verdicts(records: list[tuple[bytes, bytes]]) -> tuple[int, int]:
    """Verdicts the worker must emit for these records, and sessions left open."""
    from systerns.core.sessions import SessionPolicy

    run = CoreRun(SessionPolicy(idle_s=KAFKA_IDLE_S))
    run.feed(records)
    run.finish()
    return run.judgements, len(run.sessions.store)


def reference_rate(bootstrap: str, records: list, n_events: int) -> float:
    """Produce the records to a scratch topic and time one consumer decoding them."""
    from benchmarks.common import bench_settings, fresh_topics

    with fresh_topics(bootstrap, ("events",)) as topics:
        produce(bench_settings(bootstrap, events_topic=topics["events"]), records)
        return consume_decode_rate(bootstrap, topics["events"], len(records), n_events)


def worker_hotspots(path: Path, top: int = 16) -> list[dict]:
    """Top functions of the profiled worker's main thread (empty if no profile)."""
    import pstats

    if not path.is_file():
        print(f"no worker profile at {path}", file=sys.stderr)
        return []
    return top_functions(pstats.Stats(str(path)), top)


if __name__ == "__main__":
    raise SystemExit(main())
