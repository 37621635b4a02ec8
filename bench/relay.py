#!/usr/bin/env python3
"""Stand-in Delta Chat relay for the benchmark: answers 200 to POST /notify with keep-alive.

It counts what it receives so bench/run.sh can check that each case posted exactly what it
should: GET /count answers "<posts> <bad>", where bad counts bodies that are not one of the
tokens in TOKEN_FILE (answered 400, so curl -f and deltapush-mda notice too).

usage: relay.py TOKEN_FILE   (binds 127.0.0.1 on a free port and prints the port on a line)
"""

import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Counts:
    lock = threading.Lock()
    posts = 0
    bad = 0
    tokens: set = set()


class Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 keeps the connection open, so a client posting several tokens can reuse it.
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with Counts.lock:
            good = self.path == "/notify" and body in Counts.tokens
            if good:
                Counts.posts += 1
            else:
                Counts.bad += 1
        self.reply(200 if good else 400, b"")

    def do_GET(self):
        if self.path != "/count":
            return self.reply(404, b"")
        with Counts.lock:
            text = f"{Counts.posts} {Counts.bad}\n"
        self.reply(200, text.encode())

    def reply(self, status, body):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def main():
    (token_file,) = sys.argv[1:]
    with open(token_file, "rb") as f:
        Counts.tokens = {line.strip() for line in f if line.strip()}
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    # The caller blocks on this line: once it is there, the port accepts connections.
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
