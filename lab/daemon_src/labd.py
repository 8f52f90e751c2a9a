"""Systerns lab daemon (Python): a threaded service recorded as a benign hard negative.

It serves files of one folder on 127.0.0.1 from a threading HTTP server, checks
the folder on a timer thread, has a thread pool read and hash changed files,
and appends log lines.

With ``--legacy`` it waits the way Python 2 programs (such as
old ``docker-compose`` releases) do on kernels or VMs without a vDSO clock:
every sleep is a ``select`` with no descriptors, every clock read is a real
``gettimeofday`` system call, the HTTP server polls with ``select``, and a
thread waits on a condition with a timeout by polling it with growing sleeps
(Python 2's ``Condition.wait``). The service itself is the same.

Usage: python3 labd.py [--legacy] DIR LOGFILE TICK_MS WORKERS PORT   (TICK_MS 0: no ticker)
"""
import hashlib
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

legacy = "--legacy" in sys.argv[1:]
folder, log_path, tick_ms, workers, port = [a for a in sys.argv[1:] if a != "--legacy"][:5]
if legacy:
    import ctypes
    import select
    import selectors
    import socketserver

    import platform

    _SYS_GETTIMEOFDAY = {"x86_64": 96, "aarch64": 169}.get(platform.machine())
    if _SYS_GETTIMEOFDAY is None:
        sys.exit(f"--legacy: no gettimeofday syscall number for {platform.machine()}")
    _libc = ctypes.CDLL(None, use_errno=True)

    def _clock():
        tv = (ctypes.c_long * 2)()  # one per call: threads read the clock at once
        if _libc.syscall(_SYS_GETTIMEOFDAY, tv, None) != 0:
            raise OSError(ctypes.get_errno(), "gettimeofday")
        return tv[0] + tv[1] / 1e6

    def _sleep(seconds):
        select.select([], [], [], seconds)

    time.time = _clock
    time.sleep = _sleep
    socketserver._ServerSelector = selectors.SelectSelector
log = open(log_path, "a", buffering=1)
lock = threading.Lock()


def log_line(text):
    with lock:
        log.write(f"{time.time():.6f} {text}\n")


def digest(path):
    with open(path, "rb") as f:
        log_line(f"file={os.path.basename(path)} sum={hashlib.sha256(f.read()).hexdigest()[:16]}")


def ticker(pool):
    seen = {}
    while True:
        time.sleep(int(tick_ms) / 1000)
        with os.scandir(folder) as entries:
            for e in entries:
                if e.is_file() and seen.get(e.name) != e.stat().st_mtime_ns:
                    seen[e.name] = e.stat().st_mtime_ns
                    pool.submit(digest, e.path)
        log_line("tick")


class Quiet(SimpleHTTPRequestHandler):
    def log_message(self, fmt, *args):
        log_line("get " + fmt % args)


def legacy_waiter():
    """Wait on a condition nobody signals, as Python 2 did: poll with growing sleeps."""
    while True:
        end = time.time() + 0.5 + (time.time() % 1.0)
        delay = 0.0005
        while time.time() < end:
            delay = min(delay * 2, end - time.time(), 0.05)
            time.sleep(max(delay, 0))


pool = ThreadPoolExecutor(max_workers=int(workers))
if legacy:
    threading.Thread(target=legacy_waiter, daemon=True).start()
if int(tick_ms) > 0:
    threading.Thread(target=ticker, args=(pool,), daemon=True).start()
ThreadingHTTPServer(("127.0.0.1", int(port)), partial(Quiet, directory=folder)).serve_forever()
