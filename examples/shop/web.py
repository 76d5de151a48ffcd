"""The shop's front page: asks the API for the visit count and renders HTML.

Reads PORT and API_URL (injected by tandem because `depends_on = ["api"]`).
"""
import json
import os
import signal
import sys
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

API_URL = os.environ["API_URL"]
GREETING = os.environ.get("GREETING", "Welcome")


class Handler(BaseHTTPRequestHandler):
    # Headers and body go out in separate writes; without TCP_NODELAY, Nagle's algorithm
    # and the peer's delayed ACK hold the body back for ~40 ms.
    disable_nagle_algorithm = True

    def do_GET(self):
        if self.path == "/healthz":
            return self.answer(200, "ok\n", "text/plain")
        if self.path == "/":
            try:
                with urllib.request.urlopen(API_URL + "/visits", timeout=2) as r:
                    visits = json.load(r)["visits"]
            except Exception as e:  # the page says what went wrong
                return self.answer(502, f"api unreachable: {e}\n", "text/plain")
            html = f"<h1>{GREETING} to the shop</h1><p>visit number {visits}</p>\n"
            return self.answer(200, html, "text/html")
        return self.answer(404, "not found\n", "text/plain")

    def answer(self, status, text, kind):
        data = text.encode()
        self.send_response(status)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt, *args):
        if self.path == "/healthz":
            return
        print("web: " + fmt % args, flush=True)


signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
port = int(os.environ["PORT"])
print(f"web listening on 127.0.0.1:{port}, api at {API_URL}", flush=True)
ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
