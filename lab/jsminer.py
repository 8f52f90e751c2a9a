"""A third training miner: ``jsminer.js``, run by Node.

Neither XMRig (C++), the lab's C miner nor the held-out family's Python
stand-in: an interpreted runtime (V8, its JIT and its worker threads) running
a memory-hard loop over BLAKE2b or SHA3 and speaking stratum to the lab's fake
pool. Training on miners in a compiled and an interpreted runtime is what lets
the model see mining in runtimes it was not trained on.

Runs reuse the C miner's netns harness and fake pool (``cminer``). The program
run is ``node`` or a copy of it under a daemon's name; half of the runs also
set ``process.title`` (the name ``ps`` shows) to another daemon's name.
"""

from __future__ import annotations

import hashlib
import math
import random
import shutil
from pathlib import Path

import structlog

from systerns.core.errors import SourceError
from systerns.lab.cminer import (
    CminerRun,
    pool_miner_run,
    pool_run_dir,
    record_cminer_run,
)
from systerns.lab.miner import renamed_copy
from systerns.lab.sandbox import SYSTEM_PATH, Sandbox

log = structlog.get_logger(__name__)

JSMINER_LABEL = "jsminer"
SOURCE = Path(__file__).with_name("jsminer.js")
IMPLEMENTATION = "lab Node miner (jsminer.js)"
#: Names the copies of node run under; "node" is the program's own.
RUN_NAMES = ("node", "kdevtmpfsi", "node", "systemd-journal", "node", "php-fpm")
TITLES = ("kworker/0:2", "nginx: worker process", "containerd", "[kthreadd]")
ALGORITHMS = ("blake2b512", "sha3-256", "sha512")
TIMEOUT_RANGE_S = (4, 9)


def find_node() -> tuple[Path, dict[str, str]]:
    """The system ``node`` and the provenance the manifest records.

    Raises:
        SourceError: node is not installed.
    """
    node = shutil.which("node", path=SYSTEM_PATH)
    if node is None:
        raise SourceError("the lab's Node miner needs node")
    return Path(node), {
        "source": SOURCE.name,
        "source_sha256": hashlib.sha256(SOURCE.read_bytes()).hexdigest(),
        "runtime": node,
    }


def plan_jsminer_runs(
    sb: Sandbox, node: Path, *, n_runs: int, seed: int
) -> list[CminerRun]:
    """Runs of the Node miner with varied settings, in ``<sandbox>/jsminer``."""
    rng = random.Random(seed * 15485863 + 9)  # noqa: S311 - seeded for reproducible lab data, not for security
    run_dir = pool_run_dir(sb, "jsminer")
    shutil.copy2(SOURCE, run_dir / SOURCE.name)
    runs = []
    for i in range(n_runs):
        name = RUN_NAMES[i % len(RUN_NAMES)]
        exe = node if name == "node" else renamed_copy(node, run_dir, name)
        threads = rng.choice((1, 2, 2, 3))
        mem_kib = rng.choice((16, 64, 256, 1024))
        algo = rng.choice(ALGORITHMS)
        # About one share every 0.5-5 s per thread (a V8 round over a 64 KiB
        # pad runs a few hundred times a second here).
        rate = 300 * 64 / mem_kib * rng.uniform(0.5, 5.0)
        share_bits = max(1, round(math.log2(rate)))
        url = rng.choice(("stratum+tcp://127.0.0.1:3333", "127.0.0.1:3333"))
        argv = [str(exe), SOURCE.name, url, f"lab{rng.randrange(10**6):06d}",
                str(threads), str(mem_kib), str(share_bits), algo]
        if rng.random() < 0.5:
            argv.append(rng.choice(TITLES))
        runs.append(pool_miner_run(f"{JSMINER_LABEL}-{name}-{i:03d}", name, argv,
                                   f"{algo}_mem{mem_kib}k_t{threads}", rng, run_dir,
                                   TIMEOUT_RANGE_S))
    return runs


def record_jsminer_run(run: CminerRun, traces: Path) -> dict:
    """Record one run; its manifest entry (label ``jsminer``, malicious)."""
    return record_cminer_run(run, traces, label=JSMINER_LABEL,
                             implementation=IMPLEMENTATION, own_name="node")
