"""The lab's fake stratum pool, a script the miner harnesses run in their netns.

It listens on 127.0.0.1 only (inside the run's network namespace), answers
``mining.subscribe`` and ``mining.authorize``, hands out a job at authorize and
then a new one every ``argv[2]`` seconds, and accepts every share. Both the
training miner (``cminer``) and the held-out family (``kinsing``) talk to it.
"""

POOL_SCRIPT = r"""# Fake stratum pool on 127.0.0.1: a job at authorize, then a new one every
# argv[2] seconds; every share accepted.
import json, os, socketserver, sys, threading, time

EVERY_S = float(sys.argv[2])


class Pool(socketserver.StreamRequestHandler):
    def notify(self, n):
        job = ["job%d" % n, os.urandom(76).hex(), True]
        msg = {"id": None, "method": "mining.notify", "params": job}
        with self.lock:
            self.wfile.write((json.dumps(msg) + "\n").encode())

    def jobs(self):
        n = 1
        while not self.done.wait(EVERY_S):
            n += 1
            try:
                self.notify(n)
            except OSError:
                return

    def handle(self):
        self.lock = threading.Lock()
        self.done = threading.Event()
        for line in self.rfile:
            msg = json.loads(line)
            reply = {"id": msg.get("id"), "result": True, "error": None}
            if msg.get("method") == "mining.subscribe":
                reply["result"] = [[["mining.notify", "1"]], "08000002", 4]
            with self.lock:
                self.wfile.write((json.dumps(reply) + "\n").encode())
            if msg.get("method") == "mining.authorize":
                self.notify(1)
                threading.Thread(target=self.jobs, daemon=True).start()
        self.done.set()


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


Server(("127.0.0.1", int(sys.argv[1])), Pool).serve_forever()
"""
