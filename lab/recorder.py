"""Records the lab corpus: real programs under strace, a manifest, a split by run.

``build_corpus`` writes::

    <out_dir>/manifest.json          runs, labels, split, versions, checksums
    <out_dir>/traces/<run_id>.strace one strace file per run
    <out_dir>/sandbox/               generated inputs and renamed copies
    <out_dir>/cache/                 the extracted miner binary

Benign runs are recorded two at a time (``workers``), the plain catalog first,
then the hard negatives (CPU-heavy or serving benign runs, ``lab.catalog``'s
``HARD_CATALOG``). Miner runs come after every benign run, so their CPU use
never slows a benign recording: the real XMRig in benchmark mode and the lab's
own C miner (``lab.cminer``) against a fake pool, interleaved, ``workers`` at a
time, each in its own network namespace. The held-out attack family
(``lab.kinsing``) comes last; its runs are marked split ``heldout``.
"""

from __future__ import annotations

import json
import os
import platform
import random
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from datetime import UTC, datetime
from pathlib import Path

import structlog

from systerns.core.errors import SourceError
from systerns.lab.catalog import (
    CATALOG,
    HARD_CATALOG,
    RunSpec,
    plan_hard_runs,
    plan_runs,
    resolve_programs,
)
from systerns.lab.cminer import (
    CMINER_LABEL,
    CminerRun,
    build_cminer,
    plan_cminer_runs,
    record_cminer_run,
)
from systerns.lab.miner import (
    MINER_LABEL,
    check_netns,
    extract_miner,
    hugepages_restored,
    plan_miner_runs,
)
from systerns.lab.daemons import RUNTIMES, build_daemons, plan_daemon_runs
from systerns.lab.jsminer import JSMINER, JSMINER_LABEL
from systerns.lab.plminer import PLMINER, PLMINER_LABEL
from systerns.lab.sandbox import SYSTEM_PATH, Sandbox
from systerns.lab.scriptminer import (
    ScriptMiner,
    find_runtime,
    plan_script_miner_runs,
    record_script_miner_run,
)
from systerns.lab.server import lab_http_server
from systerns.lab.tracefile import trace_facts
from systerns.producers.cputime import file_sink, samples_path
from systerns.producers.trace import STRACE_OPTIONS, record, strace_version

log = structlog.get_logger(__name__)

MANIFEST_FORMAT = 2
TEST_SHARE = 0.25
#: Plain runs per catalog command in the default corpus.
RUNS_PER_COMMAND = 60
#: Runs of each hard-negative variant in the default corpus.
HARD_RUNS_PER_VARIANT = 6
#: XMRig runs in the default corpus.
MINER_RUNS = 32
#: Runs of the lab's C miner (``lab.cminer``) in the default corpus.
CMINER_RUNS = 200
#: Labels of the training miners (the held-out family is not one of them).
MINER_LABELS = frozenset({MINER_LABEL, CMINER_LABEL, JSMINER_LABEL, PLMINER_LABEL})
#: Runs of each lab service (``lab.daemons``; half as many of dbus-daemon).
DAEMON_RUNS = 24
#: Runs of the lab's Node miner.
JSMINER_RUNS = 72
#: Runs of the lab's Perl miner in a default corpus.
PLMINER_RUNS = 72
#: Runs of the held-out attack family (``lab.kinsing``) in the default corpus.
FAMILY_RUNS = 6
Progress = Callable[[int, int, str], None]


def default_corpus_dir() -> Path:
    """``var/lab`` under the repository (ignored by git)."""
    return Path(__file__).resolve().parents[1] / "var" / "lab"


def _http_load(port: int, paths: list[str], stop: threading.Event, seed: str) -> int:
    """GET served files from 127.0.0.1:``port`` until ``stop``; return the count."""
    rng = random.Random(seed)  # noqa: S311 - seeded for reproducible lab data, not for security
    done = 0
    while not stop.is_set():
        url = f"http://127.0.0.1:{port}/{rng.choice(paths)}"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - loopback lab server
                resp.read()
            done += 1
        except (OSError, urllib.error.URLError):
            stop.wait(0.05)
            continue
        stop.wait(rng.uniform(0.0, 0.25))
    return done


def _record_run(spec: RunSpec, sb: Sandbox, traces: Path, keep_work: bool) -> dict:
    trace = traces / f"{spec.run_id}.strace"
    stdout = spec.cwd / f"{spec.run_id}.stdout"
    stop = threading.Event()
    load: dict[str, int] = {}
    loader = None
    if spec.load == "http":
        loader = threading.Thread(
            target=lambda: load.update(
                requests=_http_load(int(spec.argv[-1]), sb.served, stop, spec.run_id)
            ),
            daemon=True,
        )
        loader.start()
    t0 = time.monotonic()
    try:
        with open(samples_path(trace), "w", encoding="ascii") as cpu_fh:
            rc = record(
                list(spec.argv),
                trace,
                timeout_s=spec.timeout_s,
                netns=spec.netns,
                argv0=spec.argv0,
                env=sb.env(lang=spec.lang),
                cwd=spec.cwd,
                stdin_path=spec.stdin,
                stdout_path=stdout,
                cpu_sink=file_sink(cpu_fh),
            )
    finally:
        stop.set()
        if loader is not None:
            loader.join(timeout=10)
    duration_s = time.monotonic() - t0
    stdout.unlink(missing_ok=True)
    if not keep_work and spec.cwd.is_relative_to(sb.work):
        shutil.rmtree(spec.cwd, ignore_errors=True)
    if rc == 124 and not spec.malicious and not spec.load:
        log.warning("lab_run_timed_out", run_id=spec.run_id, timeout_s=spec.timeout_s)
    extra: dict = {}
    if spec.hard_negative:
        extra["hard_negative"] = True
    if spec.load:
        extra["load"] = {"kind": spec.load, **load}
    return extra | {
        "run_id": spec.run_id,
        "label": spec.label,
        "malicious": spec.malicious,
        "variant": spec.variant,
        "argv": list(spec.argv),
        "argv0": spec.argv0,
        "shown_name": spec.shown_name,
        "renamed": spec.renamed,
        "rename_kind": spec.rename_kind,
        "netns": spec.netns,
        "lang": spec.lang,
        "cwd": str(spec.cwd),
        "stdin": str(spec.stdin) if spec.stdin else None,
        "timeout_s": spec.timeout_s,
    } | trace_facts(trace, traces, rc, duration_s)


def assign_splits(runs: list[dict], seed: int, test_share: float = TEST_SHARE) -> None:
    """Set ``split`` to ``train`` or ``test`` on each run, by run, deterministically.

    Per label: about ``test_share`` of the runs go to test, at least one when the
    label has two runs or more, never all of them. At least half of a label's
    renamed runs go to test (renamed copies are what evaluation is about), and
    each training miner gets at least two test runs when it has four or more.
    """
    by_label: dict[str, list[dict]] = defaultdict(list)
    for run in sorted(runs, key=lambda r: r["run_id"]):
        by_label[run["label"]].append(run)
    for label in sorted(by_label):
        group = by_label[label]
        rng = random.Random(f"{seed}/{label}")  # noqa: S311 - seeded for reproducible lab data, not for security
        renamed = [r for r in group if r["renamed"]]
        plain = [r for r in group if not r["renamed"]]
        rng.shuffle(renamed)
        rng.shuffle(plain)
        n = len(group)
        n_test = max(1, round(n * test_share)) if n >= 2 else 0
        if label in MINER_LABELS and n >= 4:
            n_test = max(2, n_test)
        test = renamed[: max(1, len(renamed) // 2)] if renamed and n >= 2 else []
        test += plain[: max(0, n_test - len(test))]
        if len(test) >= n:
            test = test[: n - 1]
        chosen = {r["run_id"] for r in test}
        for r in group:
            r["split"] = "test" if r["run_id"] in chosen else "train"


def _record_family(
    sb: Sandbox,
    traces: Path,
    n_runs: int,
    seed: int,
    progress: Progress | None,
    done: int,
) -> list[dict]:
    """Record the held-out attack family; its runs stay out of the split."""
    from systerns.lab.kinsing import plan_family_runs, record_family_run

    if n_runs <= 0:
        return []
    out = []
    for run in plan_family_runs(sb, n_runs=n_runs, seed=seed):
        try:
            out.append(record_family_run(run, traces))
        except SourceError as exc:
            log.error("lab_run_failed", run_id=run.run_id, error=str(exc))
        if progress is not None:
            progress(done + len(out), done + n_runs, run.run_id)
    return out


def _interleave(a: list, b: list) -> list:
    """Spread the shorter list evenly through the longer one."""
    if len(a) > len(b):
        a, b = b, a
    out, step = [], (len(b) + 1) / (len(a) + 1) if a else 0
    j = 0
    for i, item in enumerate(b):
        while j < len(a) and (j + 1) * step <= i + 1:
            out.append(a[j])
            j += 1
        out.append(item)
    out.extend(a[j:])
    return out


def _counts(results: list[dict]) -> dict[str, int]:
    """Run counts by kind and split, for the manifest's summary."""
    out: dict[str, int] = defaultdict(int)
    for r in results:
        kind = (
            r.get("family")
            or ("miner_" + r["label"] if r["malicious"] else "")
            or ("hard_negative" if r.get("hard_negative") else "benign")
        )
        out[f"{kind}"] += 1
        out[f"split_{r.get('split', '')}"] += 1
        if r.get("renamed") and not r["malicious"]:
            out["benign_renamed"] += 1
    return dict(sorted(out.items()))


def tool_versions(programs: dict[str, str]) -> dict[str, str]:
    """First line each program prints for its version (not traced)."""
    out = {}
    for label, exe in sorted(programs.items()):
        argv = [exe, "version"] if label == "openssl" else [exe, "--version"]
        try:
            done = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=5,
                stdin=subprocess.DEVNULL,
                check=False,
                env={"PATH": SYSTEM_PATH},
                errors="replace",
            )
            text = (done.stdout or "") + "\n" + (done.stderr or "")
            line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
        except (OSError, subprocess.TimeoutExpired):
            line = ""
        out[label] = line[:200] or "unknown"
    return out


def build_corpus(
    out_dir: Path,
    *,
    runs_per_command: int = RUNS_PER_COMMAND,
    include_miner: bool = True,
    seed: int = 7,
    progress: Progress | None = None,
    labels: set[str] | None = None,
    miner_runs: int = MINER_RUNS,
    workers: int = 2,
    keep_work: bool = False,
    family_runs: int | None = None,
    hard_runs_per_variant: int = HARD_RUNS_PER_VARIANT,
    cminer_runs: int | None = None,
    daemon_runs: int = DAEMON_RUNS,
    jsminer_runs: int | None = None,
    plminer_runs: int | None = None,
) -> Path:
    """Record the lab corpus into ``out_dir`` and write its manifest.

    Args:
        out_dir: corpus folder; its ``traces`` and ``sandbox`` are rebuilt.
        runs_per_command: plain runs per benign program (renamed runs come on top).
        include_miner: record the XMRig benchmark runs.
        seed: seed for inputs, arguments and the split.
        progress: called as ``progress(done, total, run_id)`` after each run.
        labels: record only these benign labels (all available when None).
        miner_runs: XMRig runs when ``include_miner``.
        workers: benign runs recorded at once.
        keep_work: keep each run's output folder (deleted by default).
        family_runs: runs of the held-out Kinsing-like family; ``FAMILY_RUNS``
            when None and the miner is included, else none.
        hard_runs_per_variant: runs of each hard-negative variant (0: none).
        cminer_runs: runs of the lab's C miner; ``CMINER_RUNS`` when None and
            the miner is included, else none.
        daemon_runs: runs of each lab service (``lab.daemons``; 0: none).
        jsminer_runs: runs of the lab's Node miner; ``JSMINER_RUNS`` when None
            and the miner is included, else none.
        plminer_runs: runs of the lab's Perl miner, as ``jsminer_runs``.

    Returns:
        The manifest's path.

    Raises:
        SourceError: strace is unusable, or the miner was asked for and
            ``unshare -n`` fails, the package cannot be found or gcc fails.
        ValueError: ``runs_per_command`` is below 1.
    """
    if runs_per_command < 1:
        raise ValueError("runs_per_command must be at least 1")
    t0 = time.monotonic()
    out_dir = Path(out_dir).absolute()
    traces = out_dir / "traces"
    if traces.exists():
        shutil.rmtree(traces)
    traces.mkdir(parents=True)
    sb = Sandbox(out_dir / "sandbox")
    sb.prepare(seed, huge=hard_runs_per_variant > 0)
    programs = resolve_programs(CATALOG + HARD_CATALOG, labels)

    miner_info: dict[str, str] = {}
    cminer_info: dict[str, str] = {}
    miner_specs: list[RunSpec | CminerRun] = []
    n_cminer = (
        (CMINER_RUNS if include_miner else 0) if cminer_runs is None else cminer_runs
    )
    if include_miner:
        if not check_netns():
            raise SourceError(
                "`unshare -n` does not work here; the miner never runs "
                "with network access"
            )
        miner, miner_info = extract_miner(out_dir / "cache")
        xmrig = plan_miner_runs(sb, miner, n_runs=miner_runs, seed=seed)
        cminer: list[CminerRun] = []
        if n_cminer > 0:
            cbin, cminer_info = build_cminer(out_dir / "cache")
            cminer = plan_cminer_runs(sb, cbin, n_runs=n_cminer, seed=seed)
        miner_specs = _interleave(xmrig, cminer)

    server = lab_http_server(sb.www) if "curl" in programs else nullcontext(0)
    results: list[dict] = []
    with server as port:
        sb.port = port
        specs = plan_runs(
            sb,
            {k: v for k, v in programs.items() if k in {c.label for c in CATALOG}},
            runs_per_command=runs_per_command,
            seed=seed,
        )
        if hard_runs_per_variant > 0:
            specs += plan_hard_runs(
                sb, programs, runs_per_variant=hard_runs_per_variant, seed=seed
            )
        total = len(specs) + len(miner_specs)
        log.info(
            "lab_build_start",
            out_dir=str(out_dir),
            benign_runs=len(specs),
            miner_runs=len(miner_specs),
            labels=len(programs),
        )

        def one(spec: RunSpec) -> dict | None:
            try:
                return _record_run(spec, sb, traces, keep_work)
            except SourceError as exc:
                log.error("lab_run_failed", run_id=spec.run_id, error=str(exc))
                return None

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for spec, res in zip(specs, pool.map(one, specs), strict=True):
                if res is not None:
                    results.append(res)
                if progress is not None:
                    progress(len(results), total, spec.run_id)

    benign_wall_s = time.monotonic() - t0

    def one_miner(spec: RunSpec | CminerRun) -> dict | None:
        try:
            if isinstance(spec, CminerRun):
                return record_cminer_run(spec, traces)
            with hugepages_restored():
                return _record_run(spec, sb, traces, keep_work)
        except SourceError as exc:
            log.error("lab_run_failed", run_id=spec.run_id, error=str(exc))
            return None

    # XMRig runs are interleaved with C-miner runs, so with two workers two
    # XMRig copies rarely run at once (each puts vm.nr_hugepages back).
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        done = pool.map(one_miner, miner_specs)
        for spec, res in zip(miner_specs, done, strict=True):
            if res is not None:
                results.append(res)
                log.info(
                    "lab_miner_run",
                    run_id=spec.run_id,
                    duration_s=res["duration_s"],
                    trace_lines=res["trace_lines"],
                    exit_code=res["exit_code"],
                )
            if progress is not None:
                progress(len(results), total, spec.run_id)

    n_js = (JSMINER_RUNS if include_miner else 0) if jsminer_runs is None else jsminer_runs
    n_pl = (PLMINER_RUNS if include_miner else 0) if plminer_runs is None else plminer_runs
    extra, extra_info, _ = record_extra_runs(
        sb, out_dir / "cache", traces, daemon_runs=daemon_runs,
        jsminer_runs=n_js, plminer_runs=n_pl, seed=seed, workers=workers,
    )
    results += extra
    assign_splits(results, seed)
    n_family = (
        (FAMILY_RUNS if include_miner else 0) if family_runs is None else family_runs
    )
    results += _record_family(sb, traces, n_family, seed, progress, len(results))
    wall_s = time.monotonic() - t0
    manifest = {
        "format": MANIFEST_FORMAT,
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "seed": seed,
        "runs_per_command": runs_per_command,
        "include_miner": include_miner,
        "held_out_families": sorted({r["family"] for r in results if r.get("family")}),
        "strace_version": strace_version(),
        "strace_options": list(STRACE_OPTIONS),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "programs": programs,
        "tool_versions": tool_versions(programs),
        "miner": miner_info,
        "cminer": cminer_info,
        **extra_info,
        "hard_runs_per_variant": hard_runs_per_variant,
        "counts": _counts(results),
        "benign_wall_s": round(benign_wall_s, 1),
        "build_wall_s": round(wall_s, 1),
        "runs": results,
    }
    path = out_dir / "manifest.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=1, ensure_ascii=True))
    tmp.replace(path)
    n_test = sum(r["split"] == "test" for r in results)
    log.info(
        "lab_build_done",
        manifest=str(path),
        runs=len(results),
        test_runs=n_test,
        wall_s=round(wall_s, 1),
    )
    return path


def record_extra_runs(
    sb: Sandbox,
    cache: Path,
    traces: Path,
    *,
    daemon_runs: int,
    jsminer_runs: int,
    seed: int,
    workers: int,
    plminer_runs: int = 0,
    runtimes: frozenset[str] | None = None,
    progress: Progress | None = None,
) -> tuple[list[dict], dict, int]:
    """Record the lab services (hard negatives) and the script miners' runs.

    Args:
        runtimes: record only the services of these runtimes (all when None).

    Returns:
        Their manifest entries (no split yet), the manifest's provenance keys
        (``daemons``, ``jsminer``, ``plminer``) for what was recorded, and how
        many planned runs failed to record (each logged as ``lab_run_failed``).

    Raises:
        SourceError: a script miner was asked for and its runtime is missing,
            ``unshare -n`` fails, or a service does not build.
    """
    specs: list[RunSpec] = []
    info: dict = {}
    if daemon_runs > 0:
        programs, built = build_daemons(cache, runtimes)
        missing = sorted(set(runtimes or ()) - set(programs))
        if missing:
            raise SourceError(f"services asked for but not available here: {missing}")
        specs = plan_daemon_runs(sb, programs, runs_per_runtime=daemon_runs, seed=seed)
        info["daemons"] = built | {"runtimes": ",".join(sorted(programs))}
    miners: dict[str, ScriptMiner] = {}
    script_runs: list[CminerRun] = []
    wanted = [(m, n) for m, n in ((JSMINER, jsminer_runs), (PLMINER, plminer_runs)) if n > 0]
    if wanted and not check_netns():
        raise SourceError("`unshare -n` does not work here; the miner never "
                          "runs with network access")
    for miner, n in wanted:
        exe, info[miner.label] = find_runtime(miner)
        planned = plan_script_miner_runs(miner, sb, exe, n_runs=n, seed=seed)
        miners |= {run.run_id: miner for run in planned}
        script_runs = _interleave(script_runs, planned)
    total = len(specs) + len(script_runs)
    out: list[dict] = []

    def one(spec: RunSpec | CminerRun) -> dict | None:
        try:
            if isinstance(spec, CminerRun):
                return record_script_miner_run(miners[spec.run_id], spec, traces)
            return _record_run(spec, sb, traces, keep_work=False)
        except SourceError as exc:
            log.error("lab_run_failed", run_id=spec.run_id, error=str(exc))
            return None

    todo: list[RunSpec | CminerRun] = _interleave(list(specs), script_runs)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for spec, res in zip(todo, pool.map(one, todo), strict=True):
            if res is not None:
                out.append(res)
            if progress is not None:
                progress(len(out), total, spec.run_id)
    return out, info, total - len(out)


def add_to_corpus(
    out_dir: Path,
    *,
    daemon_runs: int = DAEMON_RUNS,
    jsminer_runs: int = JSMINER_RUNS,
    workers: int = 2,
    progress: Progress | None = None,
    plminer_runs: int = 0,
    runtimes: frozenset[str] | None = None,
    family_runs: int = 0,
) -> Path:
    """Record the services, the script miners and the held-out family into a corpus.

    The runs already in the manifest and their traces stay as they are; runs
    of the kinds recorded now (the services of each runtime recorded when
    ``daemon_runs``, all of them unless ``runtimes`` names some; the Node or
    Perl miner when ``jsminer_runs`` or ``plminer_runs``; the held-out family
    when ``family_runs``) that an earlier build or addition made are replaced.
    New runs get their split from ``assign_splits`` with the corpus's seed (per
    label, so the splits of existing labels do not move); the family's runs
    stay ``heldout``. The manifest says which build added what.

    Raises:
        SourceError: no readable manifest in ``out_dir`` (checked before
            anything is recorded), a setup step failed as in
            ``record_extra_runs``, or some runs failed to record (raised after
            the manifest is written with the runs that were recorded).
    """
    out_dir = Path(out_dir).absolute()
    path = out_dir / "manifest.json"
    if not path.is_file():
        raise SourceError(f"no corpus manifest in {out_dir}; run `systerns lab` first")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SourceError(f"{path} is not a readable corpus manifest: {exc}") from exc
    if (not isinstance(manifest, dict) or not isinstance(manifest.get("runs"), list)
            or isinstance(manifest.get("seed"), bool)
            or not isinstance(manifest.get("seed"), int)):
        raise SourceError(f"{path} lacks an integer 'seed' or a 'runs' list; "
                          "rebuild the corpus with `systerns lab`")
    seed = manifest["seed"]
    sb = Sandbox(out_dir / "sandbox")
    sb.load_served()
    if not sb.served:
        raise SourceError(f"{sb.www} has no served files; rebuild the corpus")
    known = {rt.name for rt in RUNTIMES}
    if runtimes is not None and (not runtimes or not runtimes <= known):
        raise SourceError(f"unknown service runtimes {sorted(set(runtimes) - known)}; "
                          f"known: {sorted(known)}")
    t0 = time.monotonic()
    new, info, failed = record_extra_runs(
        sb, out_dir / "cache", out_dir / "traces", daemon_runs=daemon_runs,
        jsminer_runs=jsminer_runs, plminer_runs=plminer_runs, runtimes=runtimes,
        seed=seed, workers=workers, progress=progress,
    )
    assign_splits(new, seed)
    family = _record_family(sb, out_dir / "traces", family_runs, seed, progress, 0)
    failed += max(family_runs, 0) - len(family)
    new += family
    # Every new run id starts with one of these prefixes.
    recorded = info.get("daemons", {}).get("runtimes", "")
    services = (["daemon-"] if runtimes is None
                else [f"daemon-{rt}-" for rt in recorded.split(",") if rt])
    replaced = tuple(
        (services if daemon_runs > 0 else [])
        + [f"{label}-" for label, n in ((JSMINER_LABEL, jsminer_runs),
                                        (PLMINER_LABEL, plminer_runs)) if n > 0]
        + sorted({f"{r['family']}-" for r in family if r.get("family")}))
    kept = [r for r in manifest["runs"] if not r["run_id"].startswith(replaced)]
    manifest["runs"] = kept + new
    for key, value in info.items():
        before = manifest.get(key)
        if key == "daemons" and isinstance(before, dict) and runtimes is not None:
            # Provenance keys are per runtime (``<runtime>_...``): those of
            # runtimes not recorded now stay as they were.
            value = before | value
        manifest[key] = value
    if "daemons" in manifest and isinstance(manifest["daemons"], dict):
        manifest["daemons"]["runtimes"] = ",".join(sorted(
            {r["run_id"].split("-")[1] for r in manifest["runs"]
             if r["run_id"].startswith("daemon-")}))
    manifest["counts"] = _counts(manifest["runs"])
    manifest.setdefault("additions", []).append({
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "daemon_runs": daemon_runs,
        "jsminer_runs": jsminer_runs,
        "plminer_runs": plminer_runs,
        "family_runs": family_runs,
        "daemon_runtimes": ",".join(sorted(runtimes)) if runtimes else "all",
        "runs": len(new),
        "wall_s": round(time.monotonic() - t0, 1),
    })
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=1, ensure_ascii=True))
    tmp.replace(path)
    log.info("lab_corpus_extended", manifest=str(path), runs=len(new),
             failed=failed, wall_s=round(time.monotonic() - t0, 1))
    if failed:
        # The manifest above keeps what was recorded; the earlier runs of these
        # kinds are gone from it (their traces may have been overwritten).
        raise SourceError(f"{failed} of {failed + len(new)} runs failed to record; the "
                          f"manifest lists the {len(new)} that did (see lab_run_failed)")
    return path
