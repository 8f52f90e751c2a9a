"""End to end: process exit to verdict, and a running miner to its first verdict.

``cli.stack.LocalStack`` starts the model server and the Faust worker on fresh
topics of the local broker. Lab recordings are replayed with their recorded
timing: each run starts at its slot, and each batch is published when the
collector would have cut it: at its last event (256 events, exec, exit), or at
the collector's next flush of open batches (``producers.ticker``, every
``FLUSH_EVERY_S``), whichever comes first. The miner recordings (label
``xmrig``) run among them.

* exit → verdict: from the moment a process's exit event happens in the
  replay to its ``exit`` verdict arriving on the verdicts topic; p50 and p99
  over every process the core judges at exit. Reference: the same broker's
  produce → consume round trip with the collector's producer settings.
* miner → first verdict: from the miner image's first event (its ``execve``)
  to the first verdict about that image, whatever its trigger. Reference: the
  session policy's ``first_judge_s``, the earliest a running session is due.

``--before`` adds a second stack replayed as the collector published before
P7: only at a batch's last event, no timed flush.

    python -m benchmarks.e2e [--small] [--before] [--idle-s S] [--stagger-s S]
"""

from __future__ import annotations

import argparse
import heapq
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.common import (
    DEFAULT_BOOTSTRAP,
    SCRATCH,
    Figure,
    Report,
    bench_settings,
    broker_or_exit,
    fresh_topics,
    lab_runs,
    percentile,
    pick_model,
    publishable,
    quiet_logs,
    require_own_tree,
    trace_batches,
)

GOAL_EXIT_P99_MS = 1000.0
GOAL_MINER_S = 10.0
#: After the last publish, wait this long beyond the worker's idle gap.
SETTLE_S = 15.0


@dataclass
class Replay:
    """One recording placed on the replay's clock.

    Attributes:
        run: the lab manifest entry.
        host: the host name its batches carry (unique per replay).
        start_s: its slot, seconds after the replay starts.
        sends: ``(offset_s, batch)`` in publish order.
        exits: session id → offset of the exit event, for the exits judged.
        miner_sessions: for a miner, session id prefix → offset of its execve.
    """

    run: dict
    host: str
    start_s: float
    sends: list = field(default_factory=list)
    exits: dict[str, float] = field(default_factory=dict)
    miner_sessions: dict[str, float] = field(default_factory=dict)


def plan(run: dict, host: str, start_s: float, flush_s: float | None) -> Replay:
    """When each batch of a run is published, and what verdicts it must cause."""
    from systerns.core.events import EventBatch
    from systerns.core.sessions import Sessionizer, SessionPolicy

    batches = trace_batches(run, host)
    t0 = min(e.ts_ns for b in batches for e in b.events)
    rep = Replay(run, host, start_s)

    def at(ts_ns: int) -> float:
        return start_s + (ts_ns - t0) / 1e9

    for b in batches:
        if flush_s is None:
            rep.sends.append((at(b.events[-1].ts_ns), b))
            continue
        # A collector draining open batches every flush_s publishes the events
        # gathered so far at each tick; the batch's own cut sends the rest.
        groups: dict[int, list] = {}
        for e in b.events:
            groups.setdefault(int((e.ts_ns - t0) / 1e9 // flush_s), []).append(e)
        ticks = sorted(groups)
        for k in ticks:
            when = (start_s + (k + 1) * flush_s if k != ticks[-1]
                    else at(b.events[-1].ts_ns))
            rep.sends.append((when, EventBatch(b.process, tuple(groups[k]),
                                               b.source)))
    rep.sends.sort(key=lambda s: s[0])

    sessions = Sessionizer({}, SessionPolicy())
    for b in batches:
        for j in sessions.ingest(b):
            if j.trigger == "exit":
                rep.exits[j.session["session_id"]] = at(j.session["last_ts_ns"])
    if run["label"] == "xmrig":
        shown = (run.get("shown_name") or "")[:15]
        for b in batches:
            for e in b.events:
                if (e.name == "execve" and e.res >= 0 and b.process.comm == shown
                        and b.process.pid == run.get("root_pid")):
                    prefix = f"{b.process.key}/{e.ts_ns}"
                    rep.miner_sessions.setdefault(prefix, at(e.ts_ns))
    return rep


class Listener(threading.Thread):
    """Records when each verdict (and alert) arrives, with its fields."""

    def __init__(self, bootstrap: str, topics: list[str]) -> None:
        super().__init__(daemon=True)
        from confluent_kafka import Consumer

        self.consumer = Consumer({
            "bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest", "enable.auto.commit": False,
            "fetch.wait.max.ms": 10, "log_level": 0})
        self.consumer.subscribe(topics)
        self.seen: list[tuple[float, str, dict]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        from systerns.schemas.codec import Codec

        codecs = {"verdict": Codec("verdict"), "alert": Codec("alert")}
        try:
            while not self.stop.is_set():
                msg = self.consumer.poll(0.05)
                if msg is None or msg.error():
                    continue
                now = time.perf_counter()
                kind = "alert" if msg.topic().endswith("alerts") else "verdict"
                self.seen.append((now, kind, codecs[kind].decode(msg.value())))
        finally:
            self.consumer.close()


def kafka_round_trip_ms(bootstrap: str, n: int) -> list[float]:
    """Produce → consume latency of small messages, the collector's settings."""
    from confluent_kafka import Consumer

    from systerns.producers.publisher import Publisher

    with fresh_topics(bootstrap, ("rtt",), partitions=1) as topics:
        producer = Publisher(bench_settings(bootstrap, events_topic=topics["rtt"])
                             ).producer
        consumer = Consumer({"bootstrap.servers": bootstrap,
                             "group.id": f"bench-{uuid.uuid4().hex}",
                             "auto.offset.reset": "earliest",
                             "fetch.wait.max.ms": 10, "log_level": 0})
        consumer.subscribe([topics["rtt"]])
        out: list[float] = []
        try:
            deadline = time.monotonic() + 30
            while not consumer.assignment() and time.monotonic() < deadline:
                consumer.poll(0.1)
            for i in range(n):
                sent = time.perf_counter()
                producer.produce(topics["rtt"], value=str(i).encode())
                producer.poll(0)
                while True:
                    msg = consumer.poll(1.0)
                    producer.poll(0)
                    if msg is not None and not msg.error() and msg.value() == str(
                            i).encode():
                        out.append((time.perf_counter() - sent) * 1e3)
                        break
                    if time.perf_counter() - sent > 10:
                        break
                time.sleep(0.01)
        finally:
            consumer.close()
            producer.flush(10)
    return out


def replay(report: Report, bootstrap: str, model_base: Path, runs: list[dict],
           miners: list[dict], stagger_s: float, flush_s: float | None,
           label: str, idle_s: float, miner_window_s: float | None,
           settle_s: float, rtt_ms: list[float]) -> dict:
    """Run one stack, replay everything on its clock, collect the latencies."""
    from systerns.cli.stack import LocalStack
    from systerns.core.settings import Settings
    from systerns.producers.publisher import Publisher

    tag = uuid.uuid4().hex[:6]
    replays = [plan(r, f"e2e-{tag}-{r['run_id']}", i * stagger_s, flush_s)
               for i, r in enumerate(runs)]
    span = len(runs) * stagger_s
    for k, m in enumerate(miners):
        replays.append(plan(m, f"e2e-{tag}-{m['run_id']}",
                            span * (k + 1) / (len(miners) + 1), flush_s))
    if miner_window_s is not None:
        for rep in replays:
            if rep.run["label"] == "xmrig":
                end = rep.start_s + miner_window_s
                rep.sends = [s for s in rep.sends if s[0] <= end]
    # (time, run, order in the run): a flush sends several batches of one run
    # at the same moment, and batches themselves do not compare.
    queue = [(t, i, k, b) for i, rep in enumerate(replays)
             for k, (t, b) in enumerate(rep.sends)]
    heapq.heapify(queue)

    require_own_tree()
    stack = LocalStack(bootstrap=bootstrap, idle_s=idle_s, model_base=model_base,
                       log_dir=SCRATCH / "logs")
    listener = None
    lags: list[float] = []
    try:
        stack.start()
        settings = Settings.from_env(stack.env())
        listener = Listener(bootstrap, [stack.topics["verdicts"],
                                        stack.topics["alerts"]])
        listener.start()
        wait_ready(stack, settings, listener)

        publisher = Publisher(settings)
        t0 = time.perf_counter()
        while queue:
            when, _i, _k, batch = heapq.heappop(queue)
            delay = t0 + when - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            lags.append(max(-delay, 0.0))
            publisher.send(batch)
        publisher.close(30)
        time.sleep(idle_s + settle_s)
    finally:
        if listener is not None:
            listener.stop.set()
            listener.join(5)
        stack.stop()

    require_own_tree()
    return score(report, replays, listener.seen if listener else [], t0, lags, label,
                 idle_s, flush_s, rtt_ms)


def wait_ready(stack, settings, listener: Listener) -> None:
    """Publish one real short run as ``warmup`` and wait for its exit verdict."""
    from systerns.producers.publisher import Publisher

    warm = next(r for r in lab_runs() if r["label"] == "ls")
    publisher = Publisher(settings)
    for b in trace_batches(warm, "warmup"):
        publisher.send(b)
    publisher.close(30)
    deadline = time.monotonic() + 180
    while not any(k == "verdict" and v["host"] == "warmup"
                  for _t, k, v in listener.seen):
        worker = stack.procs.get("worker")
        if worker is None or worker.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("worker did not answer the warm-up run; see "
                             f"{SCRATCH / 'logs'}")
        time.sleep(0.2)


def score(report: Report, replays: list[Replay], seen: list, t0: float,
          lags: list[float], label: str, idle_s: float,
          flush_s: float | None, rtt: list[float]) -> dict:
    """Match verdicts to the exits and miners of the replay; add the figures."""
    verdicts = {}
    miner_first: dict[str, tuple[float, dict]] = {}
    alert_first: dict[str, float] = {}
    prefixes = {p: (rep, at) for rep in replays for p, at in rep.miner_sessions.items()}
    for when, kind, rec in seen:
        for prefix, (_rep, _at) in prefixes.items():
            if rec["session_id"].startswith(prefix):
                if kind == "verdict":
                    miner_first.setdefault(prefix, (when, rec))
                else:
                    alert_first.setdefault(prefix, when)
        if kind == "verdict" and rec["trigger"] == "exit":
            verdicts.setdefault(rec["session_id"], when)

    exit_ms = [(verdicts[sid] - (t0 + at)) * 1e3
               for rep in replays for sid, at in rep.exits.items() if sid in verdicts]
    expected = sum(len(rep.exits) for rep in replays)
    for q in (50, 99):
        report.add(Figure(
            f"e2e{label}.exit_to_verdict.p{q}_ms", percentile(exit_ms, q), "ms",
            f"Kafka produce->consume p{q}", percentile(rtt, q),
            f"p99 <= {GOAL_EXIT_P99_MS:.0f} ms" if q == 99 else "",
            f"{len(exit_ms)}/{expected} exit verdicts seen, "
            f"{sum(1 for r in replays if r.run['label'] != 'xmrig')} replayed runs; "
            f"publish lag p99 {percentile(lags, 99) * 1e3:.1f} ms"))

    policy_first = first_judge_s()
    miner_s, notes = [], []
    for prefix, (rep, at) in prefixes.items():
        if prefix in miner_first:
            when, rec = miner_first[prefix]
            took = when - (t0 + at)
            miner_s.append(took)
            alert = (f", first alert {alert_first[prefix] - (t0 + at):.1f} s"
                     if prefix in alert_first else ", no alert")
            notes.append(f"{rep.run['run_id']}: {took:.1f} s ({rec['trigger']}, "
                         f"{rec['n_events']} events, p_mal "
                         f"{rec['malicious_probability']:.2f}{alert})")
        else:
            notes.append(f"{rep.run['run_id']}: no verdict")
    if prefixes:
        report.add(Figure(
            f"e2e{label}.miner_first_verdict_s", max(miner_s) if miner_s else
            float("nan"), "s", "session policy first_judge_s", policy_first,
            f"<= {GOAL_MINER_S:.0f} s",
            f"worst of {len(prefixes)} miners; worker idle_s {idle_s:g}; collector "
            f"flush {'none' if flush_s is None else f'{flush_s:g} s'}; "
            + "; ".join(notes)))
    return {"exit_ms": exit_ms, "miner_s": miner_s}


def first_judge_s() -> float:
    """When the session policy first judges a running session."""
    from systerns.core.sessions import SessionPolicy

    return SessionPolicy().first_judge_s


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.e2e",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--small", action="store_true", help="a few seconds (CI)")
    p.add_argument("--stagger-s", type=float, default=0.25,
                   help="seconds between two replayed runs' starts")
    p.add_argument("--runs", type=int, help="normal lab runs to replay (default all)")
    p.add_argument("--idle-s", type=float, help="worker idle gap (LocalStack's 4 s)")
    p.add_argument("--before", action="store_true",
                   help="also replay as the collector published before P7 (no flush)")
    p.add_argument("--bootstrap", default=DEFAULT_BOOTSTRAP)
    p.add_argument("--model-wait-s", type=float, default=1800.0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    require_own_tree()
    quiet_logs()
    bootstrap = broker_or_exit(args.bootstrap)
    report = Report("e2e", args.small)
    model_base, model_label = pick_model(args.small, args.model_wait_s)

    from systerns.cli.stack import LocalStack

    idle_s = args.idle_s if args.idle_s is not None else LocalStack.idle_s
    normal = [r for r in lab_runs() if r["label"] != "xmrig"]
    miners, left_out = [], []
    for m in lab_runs("xmrig"):
        (miners if publishable(trace_batches(m, "check")) else left_out).append(m)
    if args.small:
        normal, miners = normal[:: max(len(normal) // 8, 1)][:8], miners[:1]
    elif args.runs:
        normal = normal[:: max(len(normal) // args.runs, 1)][: args.runs]
    stagger = args.stagger_s if not args.small else 0.5
    report.input.update({
        "model": model_label, "normal_runs": len(normal),
        "miner_runs": [m["run_id"] for m in miners],
        "miners_left_out": [m["run_id"] for m in left_out],
        "stagger_s": stagger, "worker_idle_s": idle_s,
        "replay_s": round(len(normal) * stagger, 1)})

    rtt = kafka_round_trip_ms(bootstrap, 50 if args.small else 300)
    report.input["kafka_rtt_messages"] = len(rtt)
    # A small run replays only the first 8 s of its miner: enough for the
    # worker's idle sweep (LocalStack: 4 s) to judge it.
    window = 8.0 if args.small else None
    settle = 5.0 if args.small else SETTLE_S
    from systerns.producers.ticker import FLUSH_EVERY_S

    replay(report, bootstrap, model_base, normal, miners, stagger, FLUSH_EVERY_S,
           "", idle_s, window, settle, rtt)
    if args.before:
        replay(report, bootstrap, model_base, normal, miners, stagger, None,
               "_before", idle_s, window, settle, rtt)
    report.emit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
