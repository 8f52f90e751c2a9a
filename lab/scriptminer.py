"""Training miners written in interpreted runtimes, one description each.

The Node miner (``jsminer.js``) and the Perl miner (``plminer.pl``) take the
same arguments and run the same way: the runtime (or a renamed copy of it)
runs the script inside the C miner's netns harness, against the lab's fake
pool on 127.0.0.1. What differs is described by a ``ScriptMiner``: the label,
the script, the runtime, the names and titles it hides behind, its hash
algorithms and how fast one round runs, which sets the share difficulty so
that each thread submits about one share every 0.5-5 s.
"""

from __future__ import annotations

import hashlib
import math
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from systerns.core.errors import SourceError
from systerns.lab.cminer import (
    CminerRun,
    pool_miner_run,
    pool_run_dir,
    record_cminer_run,
)
from systerns.lab.miner import renamed_copy
from systerns.lab.sandbox import SYSTEM_PATH, Sandbox


@dataclass(frozen=True, slots=True)
class ScriptMiner:
    """One interpreted-runtime miner of the lab.

    Attributes:
        label: its label in the corpus (malicious).
        source: the script, copied next to the pool when runs are planned.
        runtime: the interpreter's program name (found on the system path).
        implementation: what the manifest says it is.
        run_names: names the runtime runs under; ``runtime`` itself is no rename.
        titles: process titles half of the runs set for themselves.
        algorithms: hash algorithms the script accepts.
        rounds_per_s: one thread's rounds per second at a scratchpad size (KiB).
        timeout_range_s: how long a run lasts.
        salt: separates this miner's random draws from the others'.
    """

    label: str
    source: Path
    runtime: str
    implementation: str
    run_names: tuple[str, ...]
    titles: tuple[str, ...]
    algorithms: tuple[str, ...]
    rounds_per_s: Callable[[int], float]
    timeout_range_s: tuple[int, int]
    salt: int


def find_runtime(miner: ScriptMiner) -> tuple[Path, dict[str, str]]:
    """The system's interpreter for a miner and the provenance the manifest records.

    Raises:
        SourceError: the interpreter is not installed.
    """
    exe = shutil.which(miner.runtime, path=SYSTEM_PATH)
    if exe is None:
        raise SourceError(f"the lab's {miner.label} needs {miner.runtime}")
    return Path(exe), {
        "source": miner.source.name,
        "source_sha256": hashlib.sha256(miner.source.read_bytes()).hexdigest(),
        "runtime": exe,
    }


def plan_script_miner_runs(
    miner: ScriptMiner, sb: Sandbox, exe: Path, *, n_runs: int, seed: int
) -> list[CminerRun]:
    """Runs of one script miner with varied settings, in ``<sandbox>/<label>``."""
    rng = random.Random(seed * 15485863 + miner.salt)  # noqa: S311 - seeded for reproducible lab data, not for security
    run_dir = pool_run_dir(sb, miner.label)
    shutil.copy2(miner.source, run_dir / miner.source.name)
    runs = []
    for i in range(n_runs):
        name = miner.run_names[i % len(miner.run_names)]
        prog = exe if name == miner.runtime else renamed_copy(exe, run_dir, name)
        threads = rng.choice((1, 2, 2, 3))
        mem_kib = rng.choice((16, 64, 256, 1024))
        algo = rng.choice(miner.algorithms)
        rate = miner.rounds_per_s(mem_kib) * rng.uniform(0.5, 5.0)
        share_bits = max(1, round(math.log2(rate)))
        url = rng.choice(("stratum+tcp://127.0.0.1:3333", "127.0.0.1:3333"))
        argv = [str(prog), miner.source.name, url, f"lab{rng.randrange(10**6):06d}",
                str(threads), str(mem_kib), str(share_bits), algo]
        if rng.random() < 0.5:
            argv.append(rng.choice(miner.titles))
        runs.append(pool_miner_run(f"{miner.label}-{name}-{i:03d}", name, argv,
                                   f"{algo}_mem{mem_kib}k_t{threads}", rng, run_dir,
                                   miner.timeout_range_s))
    return runs


def record_script_miner_run(miner: ScriptMiner, run: CminerRun, traces: Path) -> dict:
    """Record one run; its manifest entry (the miner's label, malicious)."""
    return record_cminer_run(run, traces, label=miner.label,
                             implementation=miner.implementation,
                             own_name=miner.runtime)
