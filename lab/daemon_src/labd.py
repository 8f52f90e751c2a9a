"""Systerns lab daemon (Python): a threaded service recorded as a benign hard negative.

It serves files of one folder on 127.0.0.1 from a threading HTTP server, checks
the folder on a timer thread, has a thread pool read and hash changed files,
and appends log lines.

Usage: python3 labd.py DIR LOGFILE TICK_MS WORKERS PORT   (TICK_MS 0: no ticker)
"""
import hashlib
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

folder, log_path, tick_ms, workers, port = sys.argv[1:6]
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


pool = ThreadPoolExecutor(max_workers=int(workers))
if int(tick_ms) > 0:
    threading.Thread(target=ticker, args=(pool,), daemon=True).start()
ThreadingHTTPServer(("127.0.0.1", int(port)), partial(Quiet, directory=folder)).serve_forever()
