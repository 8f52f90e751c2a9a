"""Each benchmark runs once with ``--small`` and prints well-formed figures.

Benchmarks are not tests: nothing here checks a speed or a latency, only that
every script still runs against the current code and prints its figures (a
table, then one JSON object on the last line).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def lab_corpus() -> None:
    """The benchmarks replay the lab recordings; skip where none were recorded."""
    from benchmarks.common import LAB_DIR

    if not (LAB_DIR / "manifest.json").is_file():
        pytest.skip(f"no lab corpus at {LAB_DIR} (record it with `systerns lab`)")


def run_small(module: str, *args: str) -> tuple[dict, str]:
    """Run ``python -m benchmarks.<module> --small``; its JSON line and stdout."""
    proc = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{module}", "--small", *args],
        cwd=REPO, capture_output=True, text=True, timeout=840, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines, "the benchmark printed nothing"
    return json.loads(lines[-1]), proc.stdout


def check_figures(result: dict, stdout: str, benchmark: str,
                  expected: set[str]) -> None:
    """Figures have names, units, numeric values and references, and a ratio."""
    assert result["benchmark"] == benchmark
    assert result["small"] is True
    assert result["machine"]["cores"] >= 1

    figures = result["figures"]
    names = [f["name"] for f in figures]
    assert len(names) == len(set(names))
    assert expected <= set(names), expected - set(names)
    for f in figures:
        assert isinstance(f["unit"], str) and f["unit"]
        assert isinstance(f["reference"], str) and f["reference"]
        for key in ("value", "reference_value"):
            assert isinstance(f[key], int | float) and not isinstance(f[key], bool)
            assert not math.isinf(f[key])
        if f["ratio"] is not None:
            assert f["ratio"] == pytest.approx(f["value"] / f["reference_value"],
                                               rel=1e-3)
        assert f["name"] in stdout


@pytest.mark.integration
def test_collector_small(broker, sysdig, scap_dir, lab_corpus):
    result, out = run_small("collector", "--bootstrap", broker)
    check_figures(result, out, "collector", {
        "collector.scap.all.events_per_s", "collector.scap.large.events_per_cpu_s",
        "collector_vs_before.scap.all.events_per_s", "collector.strace.lines_per_s",
        "collector.replicas.events_per_s"})
    assert result["input"]["replicas"]["events"] > 0


@pytest.mark.integration
def test_worker_small(broker, sysdig, scap_dir, lab_corpus):
    result, out = run_small("worker", "--bootstrap", broker)
    check_figures(result, out, "worker", {
        "worker.core.events_per_s", "worker.core_vs_before.events_per_s",
        "worker.memory.bytes_per_open_session", "worker.kafka.events_per_s",
        "worker.kafka.events_per_cpu_s", "worker.kafka.rss_per_open_session"})
    assert result["before_identical"] is True


def test_model_small(sysdig, scap_dir, lab_corpus):
    result, out = run_small("model")
    check_figures(result, out, "model", {
        f"model.grpc.p{q}_ms.batch{n}" for q in (50, 99) for n in (1, 16, 64, 256)})


@pytest.mark.integration
def test_e2e_small(broker, lab_corpus):
    result, out = run_small("e2e", "--bootstrap", broker)
    check_figures(result, out, "e2e", {
        "e2e.exit_to_verdict.p50_ms", "e2e.exit_to_verdict.p99_ms",
        "e2e.miner_first_verdict_s"})
