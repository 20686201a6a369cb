"""An OpenAI-compatible server for a backend: POST /v1/chat/completions, GET /v1/models.

Standard library only (ThreadingHTTPServer). Requests run in threads; the backend serialises model
access itself. Bad requests get a 400 with an OpenAI-style error body, never a traceback.
"""
from __future__ import annotations

import json
import logging
import time
import uuid
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from reasoner.serving.backends import Backend, BackendError, Sampling

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20
MAX_SAMPLES = 16


class RequestError(ValueError):
    """A client mistake: reported as HTTP 400 with the message."""


def parse_request(body: dict, default_max_tokens: int) -> tuple[list[dict], int, Sampling]:
    if not isinstance(body, dict):
        raise RequestError("the body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty list")
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("content"), str) \
                or message.get("role") not in ("system", "user", "assistant"):
            raise RequestError("each message needs a role (system, user, assistant) and text content")
    if body.get("stream"):
        raise RequestError("streaming is not supported; leave 'stream' unset")
    n = _number(body, "n", 1, 1, MAX_SAMPLES, int)
    sampling = Sampling(temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
                        top_p=_number(body, "top_p", 1.0, 1e-6, 1.0),
                        max_tokens=_number(body, "max_tokens", body.get("max_completion_tokens", default_max_tokens),
                                           1, 1 << 20, int),
                        seed=_number(body, "seed", None, -(1 << 63), 1 << 63, int))
    messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    return messages, n, sampling


def _number(body: dict, key: str, default, low, high, kind=float):
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
        raise RequestError(f"'{key}' must be a {'whole ' if kind is int else ''}number")
    if not low <= value <= high:
        raise RequestError(f"'{key}' must be between {low} and {high}")
    return kind(value)


def completion_response(model: str, generations) -> dict:
    prompt_tokens = generations[0].prompt_tokens if generations else None
    completion_tokens = sum(g.completion_tokens or 0 for g in generations)
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
        "model": model,
        "choices": [{"index": i, "message": {"role": "assistant", "content": g.text},
                     "finish_reason": g.finish_reason} for i, g in enumerate(generations)],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": (prompt_tokens or 0) + completion_tokens},
    }


class ChatHandler(BaseHTTPRequestHandler):
    server: "ChatServer"
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            self._reply(200, {"object": "list", "data": [
                {"id": self.server.model_name, "object": "model", "created": 0, "owned_by": "reasoner"}]})
        elif self.path.rstrip("/") == "/health":
            self._reply(200, {"status": "ok"})
        else:
            self._error(HTTPStatus.NOT_FOUND, f"no route {self.path}; try /v1/chat/completions", "not_found")

    def do_POST(self):
        if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
            self._error(HTTPStatus.NOT_FOUND, f"no route {self.path}; try /v1/chat/completions", "not_found")
            return
        try:
            messages, n, sampling = parse_request(self._read_json(), self.server.max_tokens)
            generations = self.server.backend.generate(messages, n, sampling, timeout=self.server.request_timeout)
        except RequestError as err:
            self._error(HTTPStatus.BAD_REQUEST, str(err), "invalid_request_error")
        except BackendError as err:  # e.g. a prompt longer than the model's context: the client's to fix
            self._error(HTTPStatus.BAD_REQUEST, str(err), "invalid_request_error")
        except Exception:  # a server bug: logged here, a plain 500 for the client
            log.exception("chat completion failed")
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, "the model failed on this request", "server_error")
        else:
            self._reply(200, completion_response(self.server.model_name, generations))

    def _read_json(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            raise RequestError(f"the body is {length} bytes; the limit is {MAX_BODY_BYTES}")
        try:
            return json.loads(self.rfile.read(length) or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RequestError("the body is not valid JSON") from None

    def _error(self, status: HTTPStatus, message: str, kind: str):
        self._reply(status, {"error": {"message": message, "type": kind, "code": int(status)}})

    def _reply(self, status: int, payload: dict):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):
        log.info("%s %s", self.address_string(), format % args)


class ChatServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, backend: Backend, host: str = "127.0.0.1", port: int = 8000, *, model_name: str | None = None,
                 max_tokens: int = 512, request_timeout: float = 600.0):
        super().__init__((host, port), ChatHandler)
        self.backend, self.model_name = backend, model_name or backend.name
        self.max_tokens, self.request_timeout = max_tokens, request_timeout

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"
