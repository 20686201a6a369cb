"""Shared fixtures: a real tiny model, built once per session from configs/models/tiny.yaml."""
from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "reasoner" / "data"   # GSM8K test and MATH-500, shipped with the package

# Tests share 2 cores with each other's subprocesses; more threads only add contention.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def tiny():
    from reasoner.model import load_model

    return load_model("tiny")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny):
    from reasoner.model import save_checkpoint

    model, tokenizer = tiny
    return save_checkpoint(model, tokenizer, tmp_path_factory.mktemp("ckpt") / "tiny", {"purpose": "tests"})


@pytest.fixture(scope="module")
def one_thread():
    """Small ops: one thread is fastest here and does not fight other jobs for the 2 cores (restored after)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class _JsonHandler(BaseHTTPRequestHandler):
    """Hands each request to the server's `respond(server, method, body) -> (status, payload)`."""

    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self._reply(*self.server.respond(self.server, "GET", None))

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self._reply(*self.server.respond(self.server, "POST", body))

    def _reply(self, status: int, payload: dict):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def json_server():
    """start(respond, **attributes): a stub JSON server on 127.0.0.1 (real HTTP), `base_url` ending in /v1; every
    server started is shut down after the test. `respond` sees the server, so state lives in its attributes."""
    servers = []

    def start(respond, **attributes):
        server = ThreadingHTTPServer(("127.0.0.1", 0), _JsonHandler)
        server.daemon_threads, server.respond = True, respond
        server.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        for name, value in attributes.items():
            setattr(server, name, value)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()
