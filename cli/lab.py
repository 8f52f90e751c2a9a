"""``systerns lab``: record the corpus of real programs (strace) for training.

Records common commands with varied arguments, renamed copies of some, and
the real XMRig miner in benchmark mode inside its own network namespace, then
writes ``manifest.json`` (runs, labels, hashes, tool versions, split by run).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    from systerns.lab.recorder import build_corpus, default_corpus_dir

    p = argparse.ArgumentParser(prog="systerns lab", description=__doc__)
    p.add_argument("--out", type=Path, default=default_corpus_dir())
    p.add_argument("--runs-per-command", type=int, default=10)
    p.add_argument("--no-miner", action="store_true")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)

    def progress(done: int, total: int, run_id: str = "", *_: object) -> None:
        print(f"lab: {done}/{total} {run_id}", file=sys.stderr, flush=True)

    manifest = build_corpus(args.out, runs_per_command=args.runs_per_command,
                            include_miner=not args.no_miner, seed=args.seed,
                            workers=args.workers, progress=progress)
    print(manifest)
    return 0
