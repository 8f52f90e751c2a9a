"""A local pipeline for the demo and the end-to-end tests.

Starts (or reuses) the local Kafka broker from ``scripts/kafka.sh``, creates a
fresh set of topics for one run, and runs the model server and the Faust worker
as child processes. Everything binds to 127.0.0.1 and every child is stopped by
its own PID.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from confluent_kafka.admin import AdminClient, NewTopic

log = structlog.get_logger(__name__)
REPO = Path(__file__).resolve().parent.parent
KAFKA_SCRIPT = REPO / "scripts" / "kafka.sh"
MODEL_BASE = REPO / "models"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        return True
    except OSError:
        return False


@dataclass
class LocalStack:
    """Broker, topics, model server and worker for one local run.

    Attributes:
        bootstrap: the broker's address.
        run_id: suffix of this run's topic and group names.
        partitions: partitions of the run's events topic.
        idle_s: the worker's idle gap before a silent session is judged.
    """

    bootstrap: str = "127.0.0.1:9092"
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    partitions: int = 3
    idle_s: float = 4.0
    model_base: Path = MODEL_BASE
    model_name: str = "systerns"
    log_dir: Path = REPO / "var" / "logs"
    started_broker: bool = False
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    model_port: int = 0
    #: more SYSTERNS_* settings for the worker (webhook, thresholds ...).
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def topics(self) -> dict[str, str]:
        return {k: f"systerns.{self.run_id}.{k}"
                for k in ("events", "verdicts", "alerts", "deadletter")}

    def env(self) -> dict[str, str]:
        """Environment for a collector or worker of this run."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SYSTERNS_")}
        t = self.topics
        return env | {
            "SYSTERNS_BOOTSTRAP_SERVERS": self.bootstrap,
            "SYSTERNS_EVENTS_TOPIC": t["events"],
            "SYSTERNS_VERDICTS_TOPIC": t["verdicts"],
            "SYSTERNS_ALERTS_TOPIC": t["alerts"],
            "SYSTERNS_DEADLETTER_TOPIC": t["deadletter"],
            "SYSTERNS_MODEL_TARGET": f"127.0.0.1:{self.model_port}",
            "SYSTERNS_MODEL_NAME": self.model_name,
            "SYSTERNS_WORKER_ID": f"systerns-worker-{self.run_id}",
            "SYSTERNS_IDLE_S": str(self.idle_s),
        } | self.extra_env

    def start_broker(self) -> None:
        port = int(self.bootstrap.rsplit(":", 1)[1])
        if port_open(port):
            log.info("broker_reused", bootstrap=self.bootstrap)
            return
        env = os.environ | {"SYSTERNS_KAFKA_PORT": str(port)}
        subprocess.run(["bash", str(KAFKA_SCRIPT), "start"], check=True, env=env)
        self.started_broker = True

    def create_topics(self) -> None:
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        futs = admin.create_topics([
            NewTopic(name, num_partitions=self.partitions if k != "alerts" else 1,
                     replication_factor=1)
            for k, name in self.topics.items()])
        for f in futs.values():
            f.result(timeout=30)
        log.info("topics_created", run_id=self.run_id, partitions=self.partitions)

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        out = open(self.log_dir / f"{name}-{self.run_id}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(argv, env=self.env(), stdout=out, stderr=subprocess.STDOUT,
                                cwd=REPO)
        self.procs[name] = proc
        log.info("process_started", name=name, pid=proc.pid)
        return proc

    def start_model_server(self, timeout_s: float = 90.0) -> None:
        self.model_port = free_port()
        proc = self._spawn("model-server", [
            sys.executable, "-m", "systerns", "serve", "--model-base", str(self.model_base),
            "--model-name", self.model_name, "--port", str(self.model_port)])
        deadline = time.monotonic() + timeout_s
        while not port_open(self.model_port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"model server did not start; see {self.log_dir}")
            time.sleep(0.3)

    def start_worker(self) -> None:
        self._spawn("worker", [sys.executable, "-m", "systerns", "worker"])

    def start_extra_worker(self, name: str, env: dict[str, str] | None = None) -> None:
        """Start another worker of the same group under its own name.

        Args:
            name: key of the child in ``procs`` (for ``stop_process``).
            env: extra ``SYSTERNS_*`` settings for this worker only.
        """
        self.log_dir.mkdir(parents=True, exist_ok=True)
        out = open(self.log_dir / f"{name}-{self.run_id}.log", "wb")  # noqa: SIM115
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "systerns", "worker"], env=self.env() | (env or {}),
            stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        log.info("process_started", name=name, pid=self.procs[name].pid)

    def restart_model_server(self, timeout_s: float = 90.0) -> None:
        """Start the model server again on the port the workers already use."""
        proc = self._spawn("model-server", [
            sys.executable, "-m", "systerns", "serve",
            "--model-base", str(self.model_base), "--model-name", self.model_name,
            "--port", str(self.model_port)])
        deadline = time.monotonic() + timeout_s
        while not port_open(self.model_port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"model server did not restart; see {self.log_dir}")
            time.sleep(0.3)

    def start(self) -> LocalStack:
        self.start_broker()
        self.create_topics()
        self.start_model_server()
        self.start_worker()
        return self

    def stop_process(self, name: str, timeout_s: float = 20.0) -> int | None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.info("process_stopped", name=name, pid=proc.pid, code=proc.returncode)
        return proc.returncode

    def kill_process(self, name: str) -> None:
        """SIGKILL a child, as a crash would: no flush, no commit, no goodbye."""
        proc = self.procs.pop(name)
        proc.kill()
        proc.wait()
        log.info("process_killed", name=name, pid=proc.pid)

    def stop(self, *, delete_topics: bool = True) -> None:
        for name in list(self.procs):
            self.stop_process(name)
        if delete_topics:
            admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
            names = list(self.topics.values())
            names += [t for t in admin.list_topics(timeout=10).topics
                      if t.startswith(f"systerns-worker-{self.run_id}")]
            for f in admin.delete_topics(names).values():
                try:
                    f.result(timeout=30)
                except Exception:  # noqa: BLE001 - best effort clean-up
                    pass
        if self.started_broker:
            subprocess.run(["bash", str(KAFKA_SCRIPT), "stop"], check=False)


def miner_binary() -> Path:
    """The real XMRig, extracted (binary only) from the shared data into the cache."""
    from systerns.lab.miner import extract_miner

    return extract_miner(REPO / ".cache" / "miner")[0]


def miner_argv(binary: Path, threads: int = 2) -> list[str]:
    """Benchmark mode only: no pool, no config file, nothing that touches the host."""
    from systerns.lab.miner import safety_args

    return [str(binary), "--bench=1M", "-t", str(threads), "--no-color",
            "--randomx-mode=light", *safety_args()]
