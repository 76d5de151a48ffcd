"""A test service: an HTTP server on $PORT whose behaviour the test sets through variables.

/healthz answers HEALTH_STATUS (default 200); /env answers the environment as JSON;
/metrics exposes app_hello_total (broken when METRICS_BROKEN=1); /hello answers MESSAGE, failing with 500 for a FAIL_RATE share of requests and taking
DELAY_MS milliseconds. START_DELAY seconds pass before it listens. On SIGTERM it writes
TERM_MARKER (if set) and exits 0, unless IGNORE_TERM=1. ALLOC_MB allocates that much memory
ALLOC_AFTER seconds after start.
"""
import json
import os
import random
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def on_term(*_):
    marker = os.environ.get("TERM_MARKER")
    if marker:
        with open(marker, "w") as f:
            f.write("TERM\n")
    sys.exit(0)


if os.environ.get("IGNORE_TERM") == "1":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, on_term)

print(f"app starting pid={os.getpid()}", flush=True)
print("to stderr", file=sys.stderr, flush=True)
time.sleep(float(os.environ.get("START_DELAY", "0")))

hog = []
hellos = [0]
if os.environ.get("ALLOC_MB"):
    def allocate():
        time.sleep(float(os.environ.get("ALLOC_AFTER", "0.5")))
        for _ in range(int(os.environ["ALLOC_MB"])):
            hog.append(bytearray(1024 * 1024))
    threading.Thread(target=allocate, daemon=True).start()


class Handler(BaseHTTPRequestHandler):
    # Headers and body go out in separate writes; without TCP_NODELAY, Nagle's algorithm
    # and the peer's delayed ACK hold the body back for ~40 ms.
    disable_nagle_algorithm = True

    def do_GET(self):
        if self.path == "/healthz":
            status = int(os.environ.get("HEALTH_STATUS", "200"))
            body = b"ok\n" if status < 400 else b"failing\n"
        elif self.path == "/env":
            status, body = 200, json.dumps(dict(os.environ)).encode()
        elif self.path == "/hello":
            time.sleep(float(os.environ.get("DELAY_MS", "0")) / 1000)
            if random.random() < float(os.environ.get("FAIL_RATE", "0")):
                status, body = 500, b"failing on purpose\n"
            else:
                hellos[0] += 1
                status, body = 200, (os.environ.get("MESSAGE", "hello") + "\n").encode()
        elif self.path == "/metrics":
            if os.environ.get("METRICS_BROKEN") == "1":
                status, body = 200, b"app_hello_total{oops 1\n"
            else:
                text = "# HELP app_hello_total Hellos answered.\n# TYPE app_hello_total counter\n"
                text += 'app_hello_total{instance="mine"} %d\n' % hellos[0]
                status, body = 200, text.encode()
        else:
            status, body = 404, b"not found\n"
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
