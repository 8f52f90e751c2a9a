"""A second training miner: the lab's own C program, compiled at lab time.

``labminer.c`` (beside this module) is neither XMRig nor the held-out family's
Python stand-in: worker threads (pthreads) run a memory-hard hash loop over a
per-thread scratchpad and submit shares over stratum JSON-RPC (subscribe,
authorize, submit, optional keepalives and hash-rate lines) to a fake pool.
``build_cminer`` compiles it with the system ``gcc`` into the corpus cache.

Each run happens inside its own network namespace: a harness (not traced)
started by ``unshare -n`` brings the loopback up, starts the fake pool
(``pool.py``, Python, on 127.0.0.1:3333, a new job every few seconds) and then
records the renamed miner copy under strace with ``timeout -s INT``. Nothing
leaves the namespace. Runs vary in name, threads, scratchpad size, share
difficulty, CPU pinning, keepalives, reporting and pool URL form.
"""

from __future__ import annotations

import hashlib
import math
import random
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import structlog

from systerns.core.errors import SourceError
from systerns.lab.miner import renamed_copy, sha256_file
from systerns.lab.pool import POOL_SCRIPT
from systerns.lab.sandbox import SYSTEM_PATH, Sandbox
from systerns.lab.tracefile import run_harness, trace_facts
from systerns.producers.trace import KILL_GRACE_S, STRACE_OPTIONS

log = structlog.get_logger(__name__)

CMINER_LABEL = "labminer"
SOURCE = Path(__file__).with_name("labminer.c")
POOL_PORT = 3333
#: Names the miner's copies run under ("labminer" is its own name).
RUN_NAMES = (
    "kswapd0",
    "httpd",
    "labminer",
    "rsyslogd",
    "sshd",
    "dockerd",
    "bash",
    "python3",
    "cron",
    "kworker",
    "mysqld",
    "redis-server",
)
TIMEOUT_RANGE_S = (4, 9)
#: Seconds between the fake pool's new jobs, one drawn per run.
JOB_EVERY_S = (1.0, 2.5, 5.0, 30.0)
CFLAGS = ("-O2", "-pthread")


_HARNESS = r"""#!/bin/bash
# Runs inside `unshare -n`: loopback, the fake pool, then the traced miner.
set -u
seconds="$1"; job_every="$2"; shift 2
ip link set lo up || exit 3
python3 pool.py 3333 "$job_every" >/dev/null 2>&1 &
pool_pid=$!
for _ in $(seq 100); do
  (exec 3<>/dev/tcp/127.0.0.1/3333) 2>/dev/null && break
  sleep 0.1
done
timeout -s INT -k "$KILL_GRACE" "$seconds" strace "$@" >/dev/null 2>&1
rc=$?
kill "$pool_pid" 2>/dev/null
wait
exit $rc
"""


@dataclass(frozen=True, slots=True)
class CminerRun:
    """One planned run of the C miner."""

    run_id: str
    name: str
    argv: tuple[str, ...]
    variant: str
    seconds: float
    job_every_s: float
    cwd: Path


def build_cminer(cache_dir: Path) -> tuple[Path, dict[str, str]]:
    """Compile ``labminer.c`` with the system gcc into ``cache_dir``.

    Returns:
        The binary's path and its provenance (source and binary SHA-256, gcc
        version, flags).

    Raises:
        SourceError: gcc is missing or the compile fails.
    """
    gcc = shutil.which("gcc", path=SYSTEM_PATH)
    if gcc is None:
        raise SourceError("the lab's C miner needs gcc")
    cache_dir.mkdir(parents=True, exist_ok=True)
    out = cache_dir / CMINER_LABEL
    done = subprocess.run(
        [gcc, *CFLAGS, "-o", str(out), str(SOURCE)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0 or not out.is_file():
        raise SourceError(f"gcc failed on {SOURCE.name}: {done.stderr[-500:]}")
    version = subprocess.run(
        [gcc, "--version"], capture_output=True, text=True, check=False
    ).stdout.splitlines()
    info = {
        "source": SOURCE.name,
        "source_sha256": hashlib.sha256(SOURCE.read_bytes()).hexdigest(),
        "binary_sha256": sha256_file(out),
        "compiler": version[0] if version else "gcc",
        "cflags": " ".join(CFLAGS),
    }
    log.info("lab_cminer_built", path=str(out), sha256=info["binary_sha256"])
    return out, info


def plan_cminer_runs(
    sb: Sandbox, miner: Path, *, n_runs: int, seed: int
) -> list[CminerRun]:
    """Renamed copies of the C miner with varied settings, in ``<sandbox>/cminer``.

    Args:
        sb: the sandbox.
        miner: the compiled binary.
        n_runs: how many runs.
        seed: RNG seed for every varied setting.
    """
    rng = random.Random(seed * 104729 + 3)  # noqa: S311 - seeded for reproducible lab data, not for security
    run_dir = pool_run_dir(sb, "cminer")
    runs = []
    for i in range(n_runs):
        name = RUN_NAMES[i % len(RUN_NAMES)]
        copy = renamed_copy(miner, run_dir, name)
        threads = rng.choice((1, 1, 2, 2, 3))
        mem_kib = rng.choice((64, 256, 1024, 2048, 4096))
        # About one share every 0.3-3 s per thread, as a pool sets difficulty
        # from the hash rate (~20k hashes/s per thread over a 64 KiB pad here).
        rate = 2e4 * 64 / mem_kib * rng.uniform(0.3, 3.0)
        share_bits = max(1, round(math.log2(rate)))
        url = rng.choice(("stratum+tcp://127.0.0.1:3333", "127.0.0.1:3333"))
        argv = [f"./{name}", "-o", url, "-u", f"lab{rng.randrange(10**6):06d}",
                "-t", str(threads), "--mem", str(mem_kib),
                "--share-bits", str(share_bits)]
        if rng.random() < 0.4:
            argv.append("--affinity")
        if rng.random() < 0.5:
            argv += ["--keepalive", str(rng.randint(1, 5))]
        if rng.random() < 0.5:
            argv += ["--print", str(rng.randint(1, 4))]
        runs.append(pool_miner_run(f"{CMINER_LABEL}-{name}-{i:03d}", name, argv,
                                   f"mem{mem_kib}k_t{threads}", rng, run_dir))
    return runs


def pool_miner_run(run_id: str, name: str, argv: list[str], variant: str,
                   rng: random.Random, run_dir: Path,
                   seconds_range: tuple[int, int] = TIMEOUT_RANGE_S) -> CminerRun:
    """A planned pool-miner run; draws its length and the pool's job period."""
    return CminerRun(
        run_id=run_id,
        name=name,
        argv=tuple(argv),
        variant=variant,
        seconds=float(rng.randint(*seconds_range)),
        job_every_s=rng.choice(JOB_EVERY_S),
        cwd=run_dir,
    )


def pool_run_dir(sb: Sandbox, name: str) -> Path:
    """``<sandbox>/<name>`` with the fake pool and the netns harness in it."""
    run_dir = sb.root / name
    run_dir.mkdir(exist_ok=True)
    (run_dir / "pool.py").write_text(POOL_SCRIPT)
    (run_dir / "harness.sh").write_text(_HARNESS)
    return run_dir


def record_cminer_run(
    run: CminerRun,
    traces: Path,
    *,
    label: str = CMINER_LABEL,
    implementation: str = "lab C miner (labminer.c)",
    own_name: str = CMINER_LABEL,
) -> dict:
    """Record one run of a pool miner (``unshare -n`` harness, the miner under strace).

    Args:
        run: the planned run (its ``cwd`` comes from ``pool_run_dir``).
        traces: the corpus's trace folder.
        label: the miner's label (the C miner's unless told).
        implementation: what the manifest says the miner is.
        own_name: the program's own name; a run under any other is renamed.

    Returns:
        Its manifest entry (malicious).

    Raises:
        SourceError: a needed program is missing or no trace was written.
    """
    unshare = shutil.which("unshare", path=SYSTEM_PATH)
    bash = shutil.which("bash", path=SYSTEM_PATH)
    timeout = shutil.which("timeout", path=SYSTEM_PATH)
    if not (unshare and bash and timeout and shutil.which("ip", path=SYSTEM_PATH)):
        raise SourceError("unshare, bash, timeout and ip are needed")
    trace = traces / f"{run.run_id}.strace"
    cmd = [
        timeout, "-k", "5", f"{run.seconds + 30:g}",
        unshare, "-n", bash, str(run.cwd / "harness.sh"),
        f"{run.seconds:g}", f"{run.job_every_s:g}",
        *STRACE_OPTIONS, "-o", str(trace), "--", *run.argv,
    ]
    env = {"PATH": SYSTEM_PATH, "HOME": str(run.cwd), "KILL_GRACE": f"{KILL_GRACE_S:g}"}
    done, duration_s = run_harness(cmd, env=env, cwd=run.cwd, trace=trace,
                                   run_id=run.run_id)
    return {
        "run_id": run.run_id,
        "label": label,
        "malicious": True,
        "variant": run.variant,
        "argv": list(run.argv),
        "argv0": None,
        "shown_name": run.name,
        "renamed": run.name != own_name,
        "rename_kind": "copy" if run.name != own_name else "",
        "netns": True,
        "lang": False,
        "cwd": str(run.cwd),
        "stdin": None,
        "timeout_s": run.seconds,
    } | trace_facts(trace, traces, done.returncode, duration_s) | {
        "miner": {"implementation": implementation,
                  "pool_job_every_s": run.job_every_s},
    }
