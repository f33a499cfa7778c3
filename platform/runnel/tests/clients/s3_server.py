#!/usr/bin/env python3
"""An S3-protocol server for the tiered storage tests: moto's server, with bucket BUCKET
created, behind a proxy that injects faults. Prints one line "ready PORT" on stdout once
the proxy listens on 127.0.0.1:PORT, then serves until killed.

The proxy forwards every request to moto unchanged, except while a fault is set:
  ok        forward (the default)
  error     answer 503 SlowDown without forwarding
  drop      forward, then close the connection without an answer (a lost response)
  truncate  forward, then send the answer's headers and only half its body
  stall     wait 30 s, then close without an answer (a timeout)
A fault is set with "PUT /__fault/<name>" (answered 200 by the proxy itself). Each
request is counted by method under "GET /__stats" (JSON).

Usage: s3_server.py BUCKET
"""

import json
import logging
import socket
import sys
import threading
import time
import http.client
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from moto.server import ThreadedMotoServer

bucket = sys.argv[1]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# werkzeug logs every request moto serves; the tests only want failures.
logging.getLogger("werkzeug").setLevel(logging.ERROR)
moto_port = free_port()
moto = ThreadedMotoServer(ip_address="127.0.0.1", port=moto_port, verbose=False)
moto.start()

state = {"fault": "ok"}
stats = {}
lock = threading.Lock()


def create_bucket():
    for _ in range(100):
        try:
            connection = http.client.HTTPConnection("127.0.0.1", moto_port, timeout=5)
            connection.request("PUT", f"/{bucket}", headers={"Content-Length": "0"})
            response = connection.getresponse()
            response.read()
            if response.status in (200, 409):
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit("s3_server.py: moto did not create the bucket")


class Proxy(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def handle_any(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.path.startswith("/__fault/"):
            state["fault"] = self.path[len("/__fault/"):]
            return self.answer(200, b"ok")
        if self.path == "/__stats":
            with lock:
                text = json.dumps(stats).encode()
            return self.answer(200, text)
        fault = state["fault"]
        with lock:
            stats[self.command] = stats.get(self.command, 0) + 1
            stats[f"{fault}:{self.command}"] = stats.get(f"{fault}:{self.command}", 0) + 1
        if fault == "error":
            return self.answer(503, b"<Error><Code>SlowDown</Code></Error>")
        if fault == "stall":
            time.sleep(30)
            self.close_connection = True
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
        headers["Host"] = f"127.0.0.1:{moto_port}"
        connection = http.client.HTTPConnection("127.0.0.1", moto_port, timeout=30)
        connection.request(self.command, self.path, body=body, headers=headers)
        response = connection.getresponse()
        payload = response.read()
        if fault == "drop":
            self.close_connection = True
            return
        self.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() not in ("content-length", "transfer-encoding", "connection", "date", "server"):
                self.send_header(key, value)
        if self.command == "HEAD":
            # A HEAD answer carries the object's length and no body.
            self.send_header("Content-Length", response.getheader("Content-Length") or "0")
            self.end_headers()
            return
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if fault == "truncate" and len(payload) > 1:
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(payload)

    def answer(self, status, payload):
        self.send_response(status)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = handle_any


create_bucket()
server = ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
server.daemon_threads = True
print(f"ready {server.server_address[1]}", flush=True)
server.serve_forever()
