"""A tiny key-value store over TCP, standing in for a cache or database.

Protocol, one command a line: `GET key`, `SET key value`, `INCR key`, `PING`.
Answers one line. Listens on 127.0.0.1:$PORT.
"""
import os
import socketserver
import sys
import threading

DATA = {}
LOCK = threading.Lock()


class Handler(socketserver.StreamRequestHandler):
    def handle(self):
        for raw in self.rfile:
            parts = raw.decode("utf-8", "replace").strip().split(" ", 2)
            command = parts[0].upper() if parts else ""
            with LOCK:
                if command == "PING":
                    answer = "PONG"
                elif command == "GET" and len(parts) >= 2:
                    answer = DATA.get(parts[1], "")
                elif command == "SET" and len(parts) == 3:
                    DATA[parts[1]] = parts[2]
                    answer = "OK"
                elif command == "INCR" and len(parts) >= 2:
                    DATA[parts[1]] = str(int(DATA.get(parts[1], "0")) + 1)
                    answer = DATA[parts[1]]
                else:
                    answer = "ERR unknown command"
            self.wfile.write((answer + "\n").encode())


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


port = int(os.environ["PORT"])
print(f"kv listening on 127.0.0.1:{port}", flush=True)
try:
    Server(("127.0.0.1", port), Handler).serve_forever()
except KeyboardInterrupt:
    sys.exit(0)
