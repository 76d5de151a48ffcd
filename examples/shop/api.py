"""The shop's API: counts visits in the kv store and answers JSON.

Reads PORT and KV_ADDR (injected by tandem because `depends_on = ["kv"]`). Two switches
make a flawed version for trying deploys: ERROR_RATE (a share of /visits answered 500)
and EXTRA_LATENCY_MS (added to every /visits). A third makes a slow memory leak for
trying the memory forecast: LEAK_MB_PER_MIN (keep that many MiB more every minute).
"""
import json
import os
import random
import signal
import time
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

KV_HOST, KV_PORT = os.environ["KV_ADDR"].rsplit(":", 1)


def kv(command):
    with socket.create_connection((KV_HOST, int(KV_PORT)), timeout=2) as s:
        s.sendall((command + "\n").encode())
        return s.makefile().readline().strip()


class Handler(BaseHTTPRequestHandler):
    # Headers and body go out in separate writes; without TCP_NODELAY, Nagle's algorithm
    # and the peer's delayed ACK hold the body back for ~40 ms.
    disable_nagle_algorithm = True

    def do_GET(self):
        if self.path == "/healthz":
            return self.answer(200, {"ok": True})
        if self.path == "/visits":
            time.sleep(float(os.environ.get("EXTRA_LATENCY_MS", "0")) / 1000)
            if random.random() < float(os.environ.get("ERROR_RATE", "0")):
                return self.answer(500, {"error": "flawed on purpose (ERROR_RATE)"})
            try:
                return self.answer(200, {"visits": int(kv("INCR visits"))})
            except OSError as e:
                return self.answer(503, {"error": f"kv unreachable: {e}"})
        return self.answer(404, {"error": "not found"})

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt, *args):
        if self.path == "/healthz":
            return
        print("api: " + fmt % args, flush=True)


def leak(mib_per_min):
    """Keeps mib_per_min MiB more every minute, a little every second, touched so it is
    resident (a list of bytearrays never freed, as a real leak would)."""
    kept = []
    per_second = int(mib_per_min * 1024 * 1024 / 60)
    while True:
        kept.append(bytearray(b"x" * per_second))
        time.sleep(1)


LEAK_MB_PER_MIN = float(os.environ.get("LEAK_MB_PER_MIN", "0"))
if LEAK_MB_PER_MIN > 0:
    threading.Thread(target=leak, args=(LEAK_MB_PER_MIN,), daemon=True).start()

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
port = int(os.environ["PORT"])
print(f"api listening on 127.0.0.1:{port}, kv at {KV_HOST}:{KV_PORT}", flush=True)
ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
