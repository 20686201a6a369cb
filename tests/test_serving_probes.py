"""Probes over raw sockets against `reasoner serve`: bad framing, rejected bodies on keep-alive, idle and excess
connections, and the local backend's timeout on the fast engine path."""
import re
import socket
import threading
import time

import pytest

from reasoner.sampling import Sampling
from reasoner.serving.backends import LocalBackend
from reasoner.serving.server import ChatServer

LIMIT, IDLE, CONNECTIONS = 4000, 1.0, 8
HIDDEN_GET = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.fixture(scope="module")
def backend(tiny_checkpoint):
    return LocalBackend.from_pretrained(tiny_checkpoint)


@pytest.fixture(scope="module")
def server(backend):
    server = ChatServer(backend, "127.0.0.1", 0, model_name="tiny",
                        limits={"max_body_bytes": LIMIT, "idle_timeout": IDLE, "max_connections": CONNECTIONS})
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def dial(server) -> socket.socket:
    sock = socket.create_connection(server.socket.getsockname()[:2], timeout=10)
    return sock


def read_all(sock: socket.socket, timeout: float = 10) -> tuple[bytes, bool]:
    """Everything the server sends, and whether it closed the connection within `timeout`."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
        return data, True
    except (TimeoutError, socket.timeout):
        return data, False
    except ConnectionResetError:
        return data, True


def post_head(extra: str) -> bytes:
    return f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{extra}\r\n".encode()


def statuses(data: bytes) -> list[int]:
    """The status of each response in data (a response body does not end in a line break)."""
    return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", data)]


def test_a_negative_content_length_is_refused_without_reading_a_body(server):
    sock = dial(server)
    sock.sendall(post_head("Content-Length: -1\r\n"))
    try:
        for _ in range(200):  # 200 x 64 KiB: the server must not keep reading (it closes the connection)
            sock.sendall(b"x" * 65536)
    except (BrokenPipeError, ConnectionResetError):
        pass
    data, closed = read_all(sock)
    assert statuses(data) == [400] and closed


@pytest.mark.parametrize("request_bytes, status", [
    (post_head(f"Content-Length: {LIMIT + 1000}\r\n") + HIDDEN_GET + b" " * (LIMIT + 1000 - len(HIDDEN_GET)), 413),
    (post_head("Transfer-Encoding: chunked\r\n") + b"".join(b"%x\r\n%s\r\n" % (3000, b" " * 3000) for _ in range(2))
     + b"0\r\n\r\n" + HIDDEN_GET, 413),
    (post_head("Content-Length: abc\r\n") + HIDDEN_GET, 400),
    (post_head("Content-Length: 5\r\nContent-Length: 50\r\n") + b"{}   " + HIDDEN_GET, 400),
    (post_head("Content-Length: 40\r\nTransfer-Encoding: chunked\r\n") + b"0\r\n\r\n" + HIDDEN_GET, 400),
])
def test_a_rejected_body_is_never_read_as_the_next_request(server, request_bytes, status):
    sock = dial(server)
    try:
        sock.sendall(request_bytes)
    except (BrokenPipeError, ConnectionResetError):
        pass
    data, closed = read_all(sock)
    assert statuses(data) == [status] and closed  # one response, and the connection is closed after it


def test_keep_alive_still_serves_pipelined_requests(server):
    sock = dial(server)
    sock.sendall(HIDDEN_GET * 2)
    data, closed = read_all(sock, timeout=IDLE + 5)
    assert statuses(data) == [200, 200] and closed  # then closed for idling


def test_idle_and_slow_connections_are_closed_after_the_timeout(server):
    threads = threading.active_count()
    idle = [dial(server) for _ in range(4)]
    slow = dial(server)
    started = time.monotonic()
    sent = b""
    for byte in post_head("Content-Length: 2\r\n")[:12]:  # one byte every 0.25 s: never a whole request head
        try:
            slow.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            break
        sent += bytes([byte])
        time.sleep(0.25)
    assert threading.active_count() <= threads + 1  # connections are not threads
    assert all(read_all(sock, timeout=IDLE + 3) == (b"", True) for sock in idle + [slow])
    assert time.monotonic() - started < IDLE + 4 and len(sent) < 12


def test_connections_past_the_cap_are_closed_at_once(server):
    socks = [dial(server) for _ in range(CONNECTIONS + 4)]
    refused = sum(read_all(sock, timeout=0.3) == (b"", True) for sock in socks)
    assert refused >= 4
    for sock in socks:
        sock.close()
    time.sleep(0.2)
    sock = dial(server)
    sock.sendall(HIDDEN_GET)
    assert statuses(read_all(sock, timeout=IDLE + 5)[0]) == [200]


def test_the_local_backend_honours_its_timeout_on_the_engine_path(backend):
    started = time.monotonic()
    replies = backend.generate([{"role": "user", "content": "2+2"}], 16, Sampling(temperature=1.0, max_tokens=1000),
                               timeout=0.2)
    elapsed = time.monotonic() - started
    assert elapsed < 2.0, elapsed  # 16 x 1000 tokens take about a minute here
    assert any(g.finish_reason == "length" and g.completion_tokens < 1000 for g in replies)
