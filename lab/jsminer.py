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

from pathlib import Path

from systerns.lab.cminer import CminerRun
from systerns.lab.sandbox import Sandbox
from systerns.lab.scriptminer import (
    ScriptMiner,
    find_runtime,
    plan_script_miner_runs,
    record_script_miner_run,
)

JSMINER_LABEL = "jsminer"
SOURCE = Path(__file__).with_name("jsminer.js")
JSMINER = ScriptMiner(
    label=JSMINER_LABEL,
    source=SOURCE,
    runtime="node",
    implementation="lab Node miner (jsminer.js)",
    run_names=("node", "kdevtmpfsi", "node", "systemd-journal", "node", "php-fpm"),
    titles=("kworker/0:2", "nginx: worker process", "containerd", "[kthreadd]"),
    algorithms=("blake2b512", "sha3-256", "sha512"),
    # A V8 round over a 64 KiB pad runs a few hundred times a second here.
    rounds_per_s=lambda mem_kib: 300 * 64 / mem_kib,
    timeout_range_s=(4, 9),
    salt=9,
)


def find_node() -> tuple[Path, dict[str, str]]:
    """The system ``node`` and the provenance the manifest records.

    Raises:
        SourceError: node is not installed.
    """
    return find_runtime(JSMINER)


def plan_jsminer_runs(
    sb: Sandbox, node: Path, *, n_runs: int, seed: int
) -> list[CminerRun]:
    """Runs of the Node miner with varied settings, in ``<sandbox>/jsminer``."""
    return plan_script_miner_runs(JSMINER, sb, node, n_runs=n_runs, seed=seed)


def record_jsminer_run(run: CminerRun, traces: Path) -> dict:
    """Record one run; its manifest entry (label ``jsminer``, malicious)."""
    return record_script_miner_run(JSMINER, run, traces)
