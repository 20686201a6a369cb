"""What keeps the server up under hostile or careless clients: connections, bodies, keys, concurrency.

- uvicorn's h11 protocol arms its idle timer only after a response, so a socket that never sends a request
  stayed open forever, and any byte reset the timer. `GuardedH11` arms it when the connection opens and keeps
  it until a whole request head has arrived, and refuses connections past a cap.
- h11 itself rejects a bad Content-Length (-1, two values) with a 400 and closes the connection. A request with
  both Content-Length and Transfer-Encoding (a proxy and this server could frame it differently: smuggling)
  gets a 400 that closes the connection (`AmbiguousFraming`), as RFC 9112 6.3 asks.
- `read_body` rejects a body over the limit before reading it (Content-Length) or as soon as it passes the
  limit (chunked), with a 413 that closes the connection, so the rest of a rejected body is never read as the
  next request; a body that trickles in slower than `body_timeout` gets a 408.
- `Slots` caps requests in progress (429 past it); a request gives its slot back when it ends, fails, or its
  client goes away.
"""
from __future__ import annotations

import asyncio
import hmac

from fastapi import Request
from fastapi.responses import JSONResponse
from uvicorn.protocols.http.h11_impl import H11Protocol

from reasoner.serving.schemas import error_body


class GuardedH11(H11Protocol):
    max_connections = 256

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            transport.close()
            return
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def data_received(self, data: bytes) -> None:
        # Unlike uvicorn's, the idle timer keeps running until handle_events sees a whole request head.
        self.conn.receive_data(data)
        self.handle_events()

    def timeout_keep_alive_handler(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()


class AmbiguousFraming:
    """ASGI middleware: refuse a request that declares both Content-Length and Transfer-Encoding."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        names = {name for name, _ in scope.get("headers", ())}
        if scope["type"] == "http" and {b"content-length", b"transfer-encoding"} <= names:
            rejected = Rejected(400, "a request may not have both Content-Length and Transfer-Encoding", close=True)
            await rejected.response()(scope, receive, send)
            return
        await self.app(scope, receive, send)


def guarded_protocol(max_connections: int) -> type[GuardedH11]:
    return type("GuardedH11", (GuardedH11,), {"max_connections": max_connections})


class Rejected(Exception):
    """A request refused with an HTTP status and a message."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", close: bool = False):
        super().__init__(message)
        self.status, self.message, self.kind, self.close = status, message, kind, close

    def response(self) -> JSONResponse:
        headers = {"Connection": "close"} if self.close else {}
        if self.status == 429:
            headers["Retry-After"] = "1"
        if self.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        return JSONResponse(error_body(self.message, self.kind, self.status), self.status, headers=headers)


async def read_body(request: Request, max_bytes: int, timeout: float) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(int(declared), max_bytes)
    try:
        async with asyncio.timeout(timeout):
            return await _read_limited(request, max_bytes)
    except TimeoutError:
        raise Rejected(408, f"the body did not arrive within {timeout:g}s", close=True) from None


async def _read_limited(request: Request, max_bytes: int) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise _too_large(len(body), max_bytes, at_least=True)
    return bytes(body)


def _too_large(size: int, limit: int, at_least: bool = False) -> Rejected:
    more = "more than " if at_least else ""
    return Rejected(413, f"the body is {more}{size} bytes; the limit is {limit}", close=True)


def check_key(request: Request, key: str | None) -> None:
    if not key:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), key.encode()):
        raise Rejected(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                       "authentication_error")


class Slots:
    """Requests in progress, at most `limit`. Used on the event loop only."""

    def __init__(self, limit: int):
        self.limit, self.used = limit, 0

    def take(self) -> "Slot":
        if self.used >= self.limit:
            raise Rejected(429, f"the server is busy: {self.used} requests in progress, the limit is {self.limit}; "
                                f"retry later", "rate_limit_error")
        self.used += 1
        return Slot(self)


class Slot:
    def __init__(self, slots: Slots):
        self.slots, self.held = slots, True

    def release(self) -> None:
        if self.held:
            self.held = False
            self.slots.used -= 1
