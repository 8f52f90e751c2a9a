"""``systerns lab``: record the corpus of real programs (strace) for training.

Records common commands with varied arguments, renamed copies of some,
CPU-heavy benign hard negatives, the real XMRig miner in benchmark mode and the
lab's own C, Node and Perl miners against a fake pool (each inside its own network
namespace), long-running benign services in six runtimes (some waiting
in select or in Python 2's dialect), and the held-out
Kinsing-like family, then writes ``manifest.json`` (runs,
labels, hashes, tool versions, split by run).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    from systerns.lab.recorder import (
        CMINER_RUNS,
        DAEMON_RUNS,
        HARD_RUNS_PER_VARIANT,
        JSMINER_RUNS,
        MINER_RUNS,
        PLMINER_RUNS,
        RUNS_PER_COMMAND,
        add_to_corpus,
        build_corpus,
        default_corpus_dir,
    )

    p = argparse.ArgumentParser(prog="systerns lab", description=__doc__)
    p.add_argument("--out", type=Path, default=default_corpus_dir())
    p.add_argument("--runs-per-command", type=int, default=RUNS_PER_COMMAND)
    p.add_argument("--hard-runs", type=int, default=HARD_RUNS_PER_VARIANT,
                   help="runs of each hard-negative variant (0: none)")
    p.add_argument("--miner-runs", type=int, default=MINER_RUNS,
                   help="runs of the real XMRig (benchmark mode)")
    p.add_argument("--cminer-runs", type=int, default=CMINER_RUNS,
                   help="runs of the lab's own C miner")
    p.add_argument("--jsminer-runs", type=int, default=JSMINER_RUNS,
                   help="runs of the lab's own Node miner")
    p.add_argument("--plminer-runs", type=int, default=PLMINER_RUNS,
                   help="runs of the lab's own Perl miner")
    p.add_argument("--daemon-runs", type=int, default=DAEMON_RUNS,
                   help="runs of each long-running lab service (0: none)")
    p.add_argument("--add", action="store_true",
                   help="record only the services and the Node and Perl miners "
                        "into the existing corpus at --out (other runs are kept)")
    p.add_argument("--runtimes", default=None,
                   help="with --add: only the services of these runtimes "
                        "(comma-separated, e.g. pylegacy)")
    p.add_argument("--no-miner", action="store_true")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--family-runs", type=int, default=0,
                   help="with --add: record the held-out family again, this many runs "
                        "(replacing its runs)")
    args = p.parse_args(argv)

    def progress(done: int, total: int, run_id: str = "", *_: object) -> None:
        print(f"lab: {done}/{total} {run_id}", file=sys.stderr, flush=True)

    if args.runtimes and not args.add:
        p.error("--runtimes goes with --add")
    if args.family_runs and not args.add:
        p.error("--family-runs goes with --add")
    if args.add:
        runtimes = (frozenset(r.strip() for r in args.runtimes.split(",") if r.strip())
                    if args.runtimes else None)
        print(add_to_corpus(args.out, daemon_runs=args.daemon_runs,
                            jsminer_runs=0 if args.no_miner else args.jsminer_runs,
                            plminer_runs=0 if args.no_miner else args.plminer_runs,
                            runtimes=runtimes, workers=args.workers,
                            family_runs=args.family_runs, progress=progress))
        return 0
    manifest = build_corpus(args.out, runs_per_command=args.runs_per_command,
                            include_miner=not args.no_miner, seed=args.seed,
                            workers=args.workers, progress=progress,
                            hard_runs_per_variant=args.hard_runs,
                            miner_runs=args.miner_runs,
                            cminer_runs=args.cminer_runs,
                            daemon_runs=args.daemon_runs,
                            jsminer_runs=0 if args.no_miner else args.jsminer_runs,
                            plminer_runs=0 if args.no_miner else args.plminer_runs)
    print(manifest)
    return 0
