"""Benign long-running daemons, recorded as hard negatives for the miner output.

A miner is a long-lived, multi-threaded process that makes few syscalls and
talks on a socket now and then. So is every container daemon: ``dockerd``,
``containerd`` and their shims (Go), JVM services, Node services, threaded C
servers. A corpus of short command-line runs has none of them, and a model
trained on it reads any quiet long-lived process as a miner. These runs are
the counter-examples: small services of the lab's own in six runtimes (Go,
C with pthreads, Node with worker threads, Java, Python threads, Perl with an
``IO::Select`` loop and ithreads), the C service again waiting in ``select``
as older servers and terminal programs do (``cselect``), the Python service
again waiting the way Python 2 programs do on a clock without vDSO
(``pylegacy``: ``select`` sleeps, ``gettimeofday`` system calls), plus the
real ``dbus-daemon`` idling, each recorded under strace for several seconds,
idle or under light HTTP load from the recorder.

Every service serves the sandbox's ``www`` folder on 127.0.0.1 and appends log
lines; in ``scan`` runs it also checks that folder on a timer (50 ms to 3 s)
and hands changed files to a pool of threads that read and hash them, while
``quiet`` runs do nothing between requests. The Go and
C services are compiled when the corpus is recorded (``go build``, ``gcc``).

Their label is ``unknown`` (not one of the catalog's commands, so the command
output should answer "unknown", which raises no masquerading alert), except
the Python and Perl services, labelled ``python3`` and ``perl`` as every run of
those interpreters is.
"""

from __future__ import annotations

import hashlib
import random
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import structlog

from systerns.core.errors import SourceError
from systerns.lab.catalog import RunSpec
from systerns.lab.miner import sha256_file
from systerns.lab.sandbox import SYSTEM_PATH, Sandbox
from systerns.lab.server import free_port

log = structlog.get_logger(__name__)

SOURCES = Path(__file__).with_name("daemon_src")
UNKNOWN_LABEL = "unknown"
#: Seconds each daemon run lasts (it is interrupted; exit code 124 is expected).
SECONDS_RANGE = (6, 12)
#: Folder-check periods; 0 (no check: the service only waits for requests and
#: its runtime's own timers, as most daemons do most of the time) weighs most.
TICKS_MS = (0, 0, 0, 50, 200, 500, 1000, 3000)
_GO_PATH = SYSTEM_PATH + ":/usr/local/go/bin"


@dataclass(frozen=True, slots=True)
class Runtime:
    """One kind of lab service: how it is built and called."""

    name: str
    label: str
    program: str  # the executable run (a built binary for go and c)


RUNTIMES: tuple[Runtime, ...] = (
    Runtime("go", UNKNOWN_LABEL, "labd-go"),
    Runtime("c", UNKNOWN_LABEL, "labd-c"),
    Runtime("node", UNKNOWN_LABEL, "node"),
    Runtime("java", UNKNOWN_LABEL, "java"),
    Runtime("python", "python3", "python3"),
    Runtime("dbus", UNKNOWN_LABEL, "dbus-daemon"),
    # The Python service waiting as Python 2 did on a clock without vDSO
    # (``labd.py --legacy``): select sleeps, gettimeofday system calls.
    Runtime("pylegacy", "python3", "python3"),
    Runtime("cselect", UNKNOWN_LABEL, "labd-c"),
    Runtime("perl", "perl", "perl"),
)


#: The source each runtime's service runs (the C build serves ``c`` and ``cselect``).
SOURCE_OF: dict[str, str] = {
    "go": "labd.go", "c": "labd.c", "cselect": "labd.c", "node": "labd.js",
    "java": "Labd.java", "python": "labd.py", "pylegacy": "labd.py", "perl": "labd.pl",
}


def build_daemons(
    cache_dir: Path, runtimes: frozenset[str] | None = None
) -> tuple[dict[str, Path], dict[str, str]]:
    """Build the Go and C services (those asked for) and find the interpreters.

    Args:
        cache_dir: where the builds go.
        runtimes: only these runtimes (all of ``RUNTIMES`` when None).

    Returns:
        Runtime name -> executable, for every runtime asked for and available
        here, and the provenance of each: ``<runtime>_source_sha256`` and, for
        built services, ``<runtime>_binary_sha256``. A missing toolchain or
        interpreter leaves its runtime out (logged), never fails.
    """
    wanted = {rt.name for rt in RUNTIMES} if runtimes is None else set(runtimes)
    cache_dir.mkdir(parents=True, exist_ok=True)
    found: dict[str, Path] = {}
    info: dict[str, str] = {}
    go = shutil.which("go", path=_GO_PATH)
    gcc = shutil.which("gcc", path=SYSTEM_PATH)
    builds = {
        "go": (go, [go, "build", "-o", str(cache_dir / "labd-go"),
                    str(SOURCES / "labd.go")], cache_dir / "labd-go", "labd.go"),
        "c": (gcc, [gcc, "-O2", "-pthread", "-o", str(cache_dir / "labd-c"),
                    str(SOURCES / "labd.c")], cache_dir / "labd-c", "labd.c"),
    }
    env = {
        "PATH": _GO_PATH,
        "HOME": str(cache_dir),
        "GOCACHE": str(cache_dir / "gocache"),
        "GOPATH": str(cache_dir / "gopath"),
        "GOTOOLCHAIN": "local",
        "GOFLAGS": "",
        "CGO_ENABLED": "0",
    }
    for name, (tool, cmd, out, source) in builds.items():
        users = {rt for rt, src in SOURCE_OF.items() if src == source} & wanted
        if not users:
            continue
        if tool is None:
            log.warning("lab_daemon_skipped", runtime=name, reason="no toolchain")
            continue
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                              check=False, env=env)
        if done.returncode != 0 or not out.is_file():
            raise SourceError(f"building {source} failed: {done.stderr[-500:]}")
        for rt in users:
            found[rt] = out
            info[f"{rt}_binary_sha256"] = sha256_file(out)
    for rt in RUNTIMES:
        if rt.name in found or rt.name not in wanted:
            continue
        exe = shutil.which(rt.program, path=SYSTEM_PATH)
        if exe is None:
            log.warning("lab_daemon_skipped", runtime=rt.name, reason="not installed")
            continue
        found[rt.name] = Path(exe)
    for rt in found:
        if rt in SOURCE_OF:
            info[f"{rt}_source_sha256"] = hashlib.sha256(
                (SOURCES / SOURCE_OF[rt]).read_bytes()).hexdigest()
    log.info("lab_daemons_ready", runtimes=sorted(found))
    return found, info


def _args(rt: str, exe: Path, sb: Sandbox, wd: Path, tick: int,
          rng: random.Random, port: int) -> list[str]:
    www, logf = str(sb.www), str(wd / "service.log")
    workers = rng.choice((1, 2, 4, 8))
    if rt == "go":
        argv = [str(exe), "-dir", www, "-log", logf, "-tick", f"{tick}ms",
                "-procs", str(rng.choice((1, 2, 4))), "-workers", str(workers)]
        if rng.random() < 0.5:
            argv.append("-hash")
        return [*argv, "-port", str(port)]
    if rt in ("c", "cselect"):
        flag = ["-s"] if rt == "cselect" else []
        return [str(exe), *flag, www, logf, str(tick), str(workers), str(port)]
    if rt == "perl":
        return [str(exe), str(SOURCES / "labd.pl"), www, logf, str(tick),
                str(workers), str(port)]
    if rt == "node":
        return [str(exe), str(SOURCES / "labd.js"), www, logf, str(tick),
                str(rng.choice((0, 1, 2, 4))), str(port)]
    if rt == "java":
        return [str(exe), f"-Xmx{rng.choice((48, 64, 128))}m",
                f"-XX:ActiveProcessorCount={rng.choice((1, 2))}",
                str(SOURCES / "Labd.java"), www, logf, str(tick), str(workers),
                str(port)]
    if rt in ("python", "pylegacy"):
        legacy = ["--legacy"] if rt == "pylegacy" else []
        return [str(exe), str(SOURCES / "labd.py"), *legacy, www, logf, str(tick),
                str(workers), str(port)]
    return [str(exe), "--session", "--nofork", "--nopidfile",
            f"--address=unix:path={wd / 'bus'}"]


def plan_daemon_runs(
    sb: Sandbox, programs: dict[str, Path], *, runs_per_runtime: int, seed: int
) -> list[RunSpec]:
    """Draw ``runs_per_runtime`` runs of each available service (half as many of dbus).

    Runs alternate between idle and loaded (the recorder sends HTTP requests
    to the last argument, the port); ``dbus-daemon`` only idles. Most runs
    never check their folder (``quiet``: no file activity at all, only the
    runtime's waits), the others check it every 50 ms to 3 s (``scan``). Run
    ids are ``daemon-<runtime>-<n>``.
    """
    rng = random.Random(seed * 31337 + 5)  # noqa: S311 - seeded for reproducible lab data, not for security
    specs: list[RunSpec] = []
    for rt in RUNTIMES:
        exe = programs.get(rt.name)
        if exe is None:
            continue
        n_runs = runs_per_runtime // 2 if rt.name == "dbus" else runs_per_runtime
        for i in range(n_runs):
            run_id = f"daemon-{rt.name}-{i:03d}"
            wd = sb.work_dir(run_id)
            loaded = rt.name != "dbus" and i % 2 == 1
            tick = rng.choice(TICKS_MS)
            argv = _args(rt.name, exe, sb, wd, tick, rng, free_port())
            shape = "quiet" if tick == 0 or rt.name == "dbus" else "scan"
            specs.append(
                RunSpec(
                    run_id=run_id,
                    label=rt.label,
                    malicious=False,
                    argv=tuple(argv),
                    variant=f"daemon_{rt.name}_{'http' if loaded else 'idle'}_{shape}",
                    cwd=wd,
                    shown_name=Path(argv[0]).name,
                    timeout_s=float(rng.randint(*SECONDS_RANGE)),
                    lang=rng.random() < 0.5,
                    hard_negative=True,
                    load="http" if loaded else "idle",
                )
            )
    return specs
