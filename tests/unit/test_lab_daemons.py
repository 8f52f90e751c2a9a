"""The lab's long-running services (hard negatives) and its Node miner."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from systerns.lab import daemons
from systerns.lab.corpus import iter_sessions, load_corpus
from systerns.lab.daemons import RUNTIMES, UNKNOWN_LABEL, plan_daemon_runs
from systerns.lab.jsminer import (
    JSMINER_LABEL,
    find_node,
    plan_jsminer_runs,
    record_jsminer_run,
)
from systerns.lab.miner import check_netns, sha256_file
from systerns.lab.recorder import add_to_corpus, build_corpus
from systerns.lab.sandbox import Sandbox

needs_strace = pytest.mark.skipif(
    shutil.which("strace") is None, reason="strace is not installed"
)


def _sandbox(tmp_path: Path) -> Sandbox:
    sb = Sandbox(tmp_path / "sb")
    for d in (sb.work, sb.www):
        d.mkdir(parents=True)
    (sb.www / "index.html").write_text("<html></html>\n")
    sb.served = ["index.html"]
    return sb


def test_daemon_plan_covers_every_runtime_idle_and_loaded(tmp_path: Path) -> None:
    """Each runtime gets its runs, half loaded, ports last, all under the sandbox."""
    sb = _sandbox(tmp_path)
    programs = {rt.name: tmp_path / rt.program for rt in RUNTIMES}
    runs = plan_daemon_runs(sb, programs, runs_per_runtime=4, seed=7)
    by_rt: dict[str, list] = {}
    for r in runs:
        by_rt.setdefault(r.variant.split("_")[1], []).append(r)

    assert set(by_rt) == {rt.name for rt in RUNTIMES}
    assert len(by_rt["dbus"]) == 2 and all(len(v) == 4 for k, v in by_rt.items()
                                           if k != "dbus")
    assert len({r.run_id for r in runs}) == len(runs)
    for r in runs:
        assert r.hard_negative and not r.malicious and not r.netns
        labels = {"python": "python3", "pylegacy": "python3", "perl": "perl"}
        assert r.label == labels.get(r.variant.split("_")[1], UNKNOWN_LABEL)
        assert daemons.SECONDS_RANGE[0] <= r.timeout_s <= daemons.SECONDS_RANGE[1]
        if r.load == "http":
            assert 1024 <= int(r.argv[-1]) < 65536
            assert str(sb.www) in r.argv
        assert r.cwd.is_relative_to(sb.work)
    for rt, group in by_rt.items():
        loads = {r.load for r in group}
        assert loads == ({"idle"} if rt == "dbus" else {"idle", "http"})
    shapes = {r.variant.rsplit("_", 1)[1] for r in runs}
    assert shapes == {"quiet", "scan"}
    # Without a runtime's program, its runs are left out rather than failing.
    fewer = plan_daemon_runs(sb, {"c": tmp_path / "labd-c"}, runs_per_runtime=2, seed=7)
    assert {r.variant.split("_")[1] for r in fewer} == {"c"}


def test_jsminer_plan_talks_only_to_loopback(tmp_path: Path) -> None:
    """Node-miner runs: the pool and harness on 127.0.0.1, varied settings."""
    sb = _sandbox(tmp_path)
    node = tmp_path / "node"
    node.write_bytes(b"\x7fELF")
    runs = plan_jsminer_runs(sb, node, n_runs=12, seed=7)

    assert len({r.run_id for r in runs}) == 12
    assert len({r.variant for r in runs}) > 4
    assert (sb.root / "jsminer" / "jsminer.js").is_file()
    assert "ip link set lo up" in (sb.root / "jsminer" / "harness.sh").read_text()
    for r in runs:
        assert r.argv[2].endswith("127.0.0.1:3333")
        assert Path(r.argv[0]).name == r.name
        assert 4 <= r.seconds <= 9


@needs_strace
@pytest.mark.slow
def test_one_jsminer_run_mines_over_stratum(tmp_path: Path) -> None:
    """The Node miner runs worker threads and speaks stratum to the lab pool."""
    if shutil.which("node") is None or not check_netns():
        pytest.skip("node or unshare -n unavailable")
    node, info = find_node()
    sb = _sandbox(tmp_path)
    traces = tmp_path / "traces"
    traces.mkdir()
    run = dataclasses.replace(plan_jsminer_runs(sb, node, n_runs=2, seed=7)[1],
                              seconds=4.0)

    entry = record_jsminer_run(run, traces)
    text = (tmp_path / entry["trace"]).read_text()

    assert info["source_sha256"]
    assert entry["label"] == JSMINER_LABEL and entry["malicious"] and entry["netns"]
    assert entry["renamed"] == (run.name != "node")
    assert entry["exit_code"] == 124
    assert 'inet_addr("127.0.0.1")' in text and "htons(3333)" in text
    assert "mining.subscribe" in text and "mining.submit" in text
    assert text.count("clone") >= 2


@needs_strace
@pytest.mark.slow
def test_services_are_added_to_an_existing_corpus(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``add_to_corpus`` records every service, keeps the runs already there."""
    monkeypatch.setattr(daemons, "SECONDS_RANGE", (3, 3))
    monkeypatch.setattr(daemons, "RUNTIMES", tuple(
        rt for rt in RUNTIMES if rt.name in {"c", "go", "node", "dbus"}))
    lab = tmp_path / "lab"
    path = build_corpus(lab, runs_per_command=2, include_miner=False, seed=5,
                        labels={"date"}, hard_runs_per_variant=0, daemon_runs=0)
    before = json.loads(path.read_text())["runs"]

    add_to_corpus(lab, daemon_runs=2, jsminer_runs=0)
    manifest = json.loads(path.read_text())
    runs = manifest["runs"]
    added = [r for r in runs if r["run_id"].startswith("daemon-")]
    available = set(manifest["daemons"]["runtimes"].split(","))

    assert runs[: len(before)] == before
    assert {r["variant"].split("_")[1] for r in added} == available
    assert {"c", "dbus"} <= available
    assert manifest["additions"][-1]["runs"] == len(added)
    assert manifest["counts"]["hard_negative"] == len(added)
    for r in added:
        assert r["split"] in {"train", "test"} and r["hard_negative"]
        assert r["exit_code"] == 124, r
        assert sha256_file(lab / r["trace"]) == r["sha256"]
        if r["load"]["kind"] == "http":
            assert r["load"]["requests"] > 0, r
    loaded = load_corpus(lab)
    sessions = [s for s in iter_sessions(lab, runs=loaded)
                if s["run_id"].startswith("daemon-") and s["role"] == "main"]
    assert {s["run_id"] for s in sessions} == {r["run_id"] for r in added}
    threaded = [s for s in sessions if len(s["session"]["tids"]) >= 3]
    assert threaded, "the services run several threads"
    # A second addition replaces the services' runs rather than doubling them.
    add_to_corpus(lab, daemon_runs=2, jsminer_runs=0)
    again = json.loads(path.read_text())["runs"]
    assert len(again) == len(runs)


@pytest.mark.parametrize("text", ["{not json", '{"seed": "7", "runs": []}',
                                  '{"seed": 7}', "[1, 2]"])
def test_add_refuses_a_bad_manifest_before_recording(tmp_path: Path, text: str,
                                                     monkeypatch) -> None:
    from systerns.core.errors import SourceError
    from systerns.lab import recorder

    called = []
    monkeypatch.setattr(recorder, "record_extra_runs",
                        lambda *a, **k: called.append(1) or ([], {}, 0))
    (tmp_path / "sandbox" / "www").mkdir(parents=True)
    (tmp_path / "sandbox" / "www" / "index.html").write_text("x")
    (tmp_path / "manifest.json").write_text(text)
    with pytest.raises(SourceError):
        add_to_corpus(tmp_path, daemon_runs=1, jsminer_runs=0)
    assert not called


def test_add_says_when_runs_failed_and_keeps_what_was_recorded(
        tmp_path: Path, monkeypatch) -> None:
    from systerns.core.errors import SourceError
    from systerns.lab import recorder

    ok = {"run_id": "daemon-c-000", "label": "unknown", "malicious": False,
          "renamed": False, "hard_negative": True}
    monkeypatch.setattr(recorder, "record_extra_runs",
                        lambda *a, **k: ([dict(ok)], {}, 2))
    (tmp_path / "sandbox" / "www").mkdir(parents=True)
    (tmp_path / "sandbox" / "www" / "index.html").write_text("x")
    old = [{"run_id": "ls-000", "label": "ls", "malicious": False,
            "renamed": False, "split": "train"},
           {"run_id": "daemon-go-000", "label": "unknown", "malicious": False,
            "renamed": False, "split": "test", "hard_negative": True}]
    (tmp_path / "manifest.json").write_text(json.dumps({"seed": 7, "runs": old}))
    with pytest.raises(SourceError, match="2 of 3 runs failed"):
        add_to_corpus(tmp_path, daemon_runs=1, jsminer_runs=0)
    runs = json.loads((tmp_path / "manifest.json").read_text())["runs"]
    assert [r["run_id"] for r in runs] == ["ls-000", "daemon-c-000"]


def test_add_with_runtimes_replaces_only_those_services(
        tmp_path: Path, monkeypatch) -> None:
    """``--runtimes pylegacy`` keeps the other services and merges provenance."""
    from systerns.lab import recorder

    seen = {}

    def fake(*a, **k):
        seen.update(k)
        return ([{"run_id": "daemon-pylegacy-000", "label": "python3",
                  "malicious": False, "renamed": False, "hard_negative": True}],
                {"daemons": {"runtimes": "pylegacy", "pylegacy_source_sha256": "cd"}}, 0)

    monkeypatch.setattr(recorder, "record_extra_runs", fake)
    (tmp_path / "sandbox" / "www").mkdir(parents=True)
    (tmp_path / "sandbox" / "www" / "index.html").write_text("x")
    old = [{"run_id": "daemon-python-000", "label": "python3", "malicious": False,
            "renamed": False, "split": "train", "hard_negative": True},
           {"run_id": "daemon-pylegacy-000", "label": "python3", "malicious": False,
            "renamed": False, "split": "test", "hard_negative": True}]
    (tmp_path / "manifest.json").write_text(json.dumps({
        "seed": 7, "runs": old,
        "daemons": {"runtimes": "c,go,python", "c_source_sha256": "ab"}}))
    add_to_corpus(tmp_path, daemon_runs=1, jsminer_runs=0,
                  runtimes=frozenset({"pylegacy"}))
    manifest = json.loads((tmp_path / "manifest.json").read_text())

    assert seen["runtimes"] == frozenset({"pylegacy"})
    assert [r["run_id"] for r in manifest["runs"]] == ["daemon-python-000",
                                                       "daemon-pylegacy-000"]
    assert manifest["runs"][1]["split"] in {"train", "test"}
    # The runtimes listed are those the manifest's runs hold; the C service's
    # provenance stays, the new runtime's is added.
    assert manifest["daemons"] == {"runtimes": "pylegacy,python",
                                   "c_source_sha256": "ab",
                                   "pylegacy_source_sha256": "cd"}
    assert manifest["additions"][-1]["daemon_runtimes"] == "pylegacy"


@pytest.mark.parametrize("names", [{"pylegcy"}, set()])
def test_add_refuses_unknown_runtimes_before_recording(
        tmp_path: Path, monkeypatch, names: set) -> None:
    from systerns.core.errors import SourceError
    from systerns.lab import recorder

    called = []
    monkeypatch.setattr(recorder, "record_extra_runs",
                        lambda *a, **k: called.append(1) or ([], {}, 0))
    (tmp_path / "sandbox" / "www").mkdir(parents=True)
    (tmp_path / "sandbox" / "www" / "index.html").write_text("x")
    (tmp_path / "manifest.json").write_text(json.dumps({"seed": 7, "runs": []}))
    with pytest.raises(SourceError):
        add_to_corpus(tmp_path, daemon_runs=1, jsminer_runs=0,
                      runtimes=frozenset(names))
    assert not called


def test_build_only_what_is_asked_for(tmp_path: Path, monkeypatch) -> None:
    """Interpreted services alone build nothing; each gets its source's hash."""
    def no_build(*a, **k):
        raise AssertionError(f"built {a[0]}")

    monkeypatch.setattr(daemons.subprocess, "run", no_build)
    found, info = daemons.build_daemons(tmp_path, frozenset({"pylegacy", "perl"}))

    assert set(found) <= {"pylegacy", "perl"}
    for rt in found:
        assert info[f"{rt}_source_sha256"] == sha256_file(
            daemons.SOURCES / daemons.SOURCE_OF[rt])
    assert not any(k.endswith("_binary_sha256") for k in info)


def test_plminer_plan_talks_only_to_loopback(tmp_path: Path) -> None:
    """Perl-miner runs: own label and folder, loopback pool, renamed copies of perl."""
    from systerns.lab.plminer import PLMINER, PLMINER_LABEL
    from systerns.lab.scriptminer import plan_script_miner_runs

    sb = _sandbox(tmp_path)
    perl = tmp_path / "perl"
    perl.write_bytes(b"\x7fELF")
    runs = plan_script_miner_runs(PLMINER, sb, perl, n_runs=12, seed=7)

    assert (sb.root / PLMINER_LABEL / "plminer.pl").is_file()
    assert all(r.run_id.startswith(f"{PLMINER_LABEL}-") for r in runs)
    assert {r.name for r in runs} > {"perl"}
    for r in runs:
        assert r.argv[1] == "plminer.pl" and r.argv[2].endswith("127.0.0.1:3333")
        assert r.argv[7] in PLMINER.algorithms and int(r.argv[6]) >= 1


@needs_strace
@pytest.mark.slow
def test_one_plminer_run_mines_over_stratum(tmp_path: Path) -> None:
    """The Perl miner runs ithreads and submits shares to the lab pool."""
    from systerns.lab.plminer import PLMINER
    from systerns.lab.scriptminer import (
        find_runtime,
        plan_script_miner_runs,
        record_script_miner_run,
    )

    if shutil.which("perl") is None or not check_netns():
        pytest.skip("perl or unshare -n unavailable")
    perl, info = find_runtime(PLMINER)
    sb = _sandbox(tmp_path)
    traces = tmp_path / "traces"
    traces.mkdir()
    run = dataclasses.replace(
        plan_script_miner_runs(PLMINER, sb, perl, n_runs=2, seed=7)[1], seconds=4.0)

    entry = record_script_miner_run(PLMINER, run, traces)
    text = (tmp_path / entry["trace"]).read_text()

    assert info["source_sha256"] and entry["label"] == "plminer"
    assert entry["malicious"] and entry["netns"] and entry["renamed"]
    assert 'inet_addr("127.0.0.1")' in text and "htons(3333)" in text
    assert "mining.subscribe" in text and "mining.submit" in text
    assert text.count("clone") >= 2


@needs_strace
def test_legacy_python_service_waits_in_select_and_reads_the_clock_by_syscall(
        tmp_path: Path) -> None:
    """``labd.py --legacy``: sleeps are select calls, clock reads gettimeofday calls."""
    import subprocess
    import sys

    from systerns.lab.server import free_port

    www = tmp_path / "www"
    www.mkdir()
    (www / "a.txt").write_text("x")
    out = tmp_path / "trace"
    subprocess.run(["timeout", "3", "strace", "-f", "-o", str(out), sys.executable,
                    str(daemons.SOURCES / "labd.py"), "--legacy", str(www),
                    str(tmp_path / "log"), "100", "2", str(free_port())],
                   check=False, capture_output=True)
    text = out.read_text()
    assert text.count("gettimeofday(") > 20
    assert text.count("pselect6(") + text.count("select(") > 20
    assert "clock_nanosleep(" not in text


def test_select_and_perl_services_keep_the_port_last(tmp_path: Path) -> None:
    """``cselect`` runs the C build with ``-s``; Perl runs ``labd.pl``; port last."""
    sb = _sandbox(tmp_path)
    programs = {"cselect": tmp_path / "labd-c", "perl": tmp_path / "perl"}
    runs = plan_daemon_runs(sb, programs, runs_per_runtime=2, seed=7)
    by_rt = {r.variant.split("_")[1]: r for r in runs}

    assert by_rt["cselect"].argv[:2] == (str(tmp_path / "labd-c"), "-s")
    assert by_rt["perl"].argv[1].endswith("labd.pl") and by_rt["perl"].label == "perl"
    assert by_rt["cselect"].label == UNKNOWN_LABEL
    for r in runs:
        assert 1024 <= int(r.argv[-1]) < 65536
