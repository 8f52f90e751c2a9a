"""A fourth training miner: ``plminer.pl``, run by Perl.

A second interpreted runtime beside Node, so that "mining" is learnt from
more than one interpreter's way of running threads: Perl ithreads fill and mix
a scratchpad with SHA-2 (or SHA-1) rounds from ``Digest::SHA`` while the main
thread polls the pool socket and a share queue with ``select``. It speaks
stratum to the lab's fake pool in the C miner's netns harness, runs as
``perl`` or a renamed copy, and half of the runs set ``$0`` to a daemon's name.
Like every training miner, it shares no code with the held-out family's
Python stand-in.
"""

from __future__ import annotations

from pathlib import Path

from systerns.lab.scriptminer import ScriptMiner

PLMINER_LABEL = "plminer"
PLMINER = ScriptMiner(
    label=PLMINER_LABEL,
    source=Path(__file__).with_name("plminer.pl"),
    runtime="perl",
    implementation="lab Perl miner (plminer.pl)",
    run_names=("perl", "kthreaddk", "perl", "cron", "perl", "rsyslogd"),
    titles=("kworker/1:0", "sshd: root@notty", "crond", "/usr/sbin/apache2 -k start"),
    algorithms=("sha256", "sha512", "sha1"),
    # Measured under strace here: ~500 rounds/s at 16 KiB, ~200 at 64, ~120 at 256.
    rounds_per_s=lambda mem_kib: 200 * (64 / mem_kib) ** 0.6,
    timeout_range_s=(4, 9),
    salt=23,
)
