"""An OpenAI-compatible server for a local checkpoint: POST /v1/chat/completions, GET /v1/models, GET /health.

FastAPI on uvicorn (h11, with reasoner.serving.guards on connections and bodies). Completions go through the
dynamic batcher (reasoner.serving.batcher): requests that arrive together are decoded in one model call.
`stream: true` answers with Server-Sent Events in OpenAI's chunk format, ending in `data: [DONE]`. With
`pipeline=True` the server also lists `reasoner-pipeline`, which runs the whole verified pipeline
(reasoner.serving.pipeline_model). Bad requests get a 400 with an OpenAI-style error body, never a traceback.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from reasoner.errors import ReasonerError
from reasoner.serving.backends import LocalBackend
from reasoner.serving.batcher import BatchedBackend, Batcher
from reasoner.serving.completions import ModelCompletion, PipelineCompletion
from reasoner.serving.guards import AmbiguousFraming, Rejected, Slots, check_key, guarded_protocol, read_body
from reasoner.serving.pipeline_model import PIPELINE_MODEL, PipelineModel
from reasoner.serving.schemas import ChatRequest, ModelCard, ModelList, error_body, error_message

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20
MAX_SAMPLES = 16


@dataclass
class Limits:
    max_body_bytes: int = MAX_BODY_BYTES
    max_n: int = MAX_SAMPLES
    max_tokens: int = 4096         # the most one request may ask for (the model's context cuts it further)
    max_concurrent: int = 64       # requests in progress; past it, 429
    max_connections: int = 256     # open sockets; past it, new ones are closed at once
    idle_timeout: float = 5.0      # seconds a connection may wait before sending a whole request head
    body_timeout: float = 30.0     # seconds a request body may take to arrive


@dataclass
class Settings:
    model_name: str
    default_max_tokens: int = 512
    request_timeout: float = 600.0
    api_key: str | None = None
    pipeline: bool = False
    traces: str | None = None      # the pipeline model's trace store (default: $REASONER_HOME/traces.db)
    prompt_style: str = "compact"  # how the pipeline asks the model: the style its recipe trained it in
    batch_window: float = 0.01     # seconds to wait for more requests before a batch starts
    max_batch_rows: int = 64
    segment_tokens: int = 16       # tokens per model call; streamed text arrives this many tokens at a time
    limits: Limits = field(default_factory=Limits)


class Service:
    """What the routes share: the backend, its batcher, the pipeline model, the request slots."""

    def __init__(self, backend: LocalBackend, settings: Settings):
        self.backend, self.settings, self.limits = backend, settings, settings.limits
        self.batcher = Batcher(backend, window=settings.batch_window, max_rows=settings.max_batch_rows,
                               segment_tokens=settings.segment_tokens)
        self.slots = Slots(self.limits.max_concurrent)
        self.pool = ThreadPoolExecutor(self.limits.max_concurrent, thread_name_prefix="pipeline")
        self.pipeline = PipelineModel(BatchedBackend(self.batcher), traces=settings.traces,
                                      prompt_style=settings.prompt_style) \
            if settings.pipeline else None

    @property
    def models(self) -> list[str]:
        return [self.settings.model_name] + ([PIPELINE_MODEL] if self.pipeline else [])

    def parse(self, body: bytes) -> ChatRequest:
        try:
            chat = ChatRequest.model_validate_json(body or b"null")
        except ValidationError as err:
            raise Rejected(400, error_message(err, self.limits.max_n)) from None
        chat.model = chat.model or self.settings.model_name
        if chat.model not in self.models:
            raise Rejected(404, f"the model '{chat.model}' does not exist; this server has: {', '.join(self.models)}",
                           "not_found_error")
        self._check_size(chat)
        return chat

    def _check_size(self, chat: ChatRequest) -> None:
        if chat.n > self.limits.max_n:
            raise Rejected(413, f"'n' is {chat.n}; this server draws at most {self.limits.max_n} per request")
        asked = chat.max_tokens or chat.max_completion_tokens or 0  # the server's own default is not limited
        if asked > self.limits.max_tokens:
            raise Rejected(413, f"'max_tokens' is {asked}; this server allows at most {self.limits.max_tokens}")

    def model_completion(self, chat: ChatRequest, slot) -> ModelCompletion:
        try:
            _, ids = self.backend.encode(chat.plain_messages())
            sampling = chat.sampling(self.settings.default_max_tokens)
            sampling = replace(sampling, max_tokens=self.backend.room(len(ids), sampling.max_tokens))
        except ReasonerError as err:  # e.g. a prompt longer than the context: the client's to fix
            slot.release()
            raise Rejected(400, str(err)) from None
        deadline = time.monotonic() + self.settings.request_timeout
        return ModelCompletion(self.batcher, chat, chat.model, ids, sampling, deadline, slot)

    def close(self) -> None:
        self.batcher.close()
        self.pool.shutdown(wait=False, cancel_futures=True)


def create_app(service: Service) -> FastAPI:
    app = FastAPI(title="reasoner", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(AmbiguousFraming)
    _add_error_handlers(app)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    @app.get("/models")
    async def models(request: Request):
        check_key(request, service.settings.api_key)
        return ModelList(data=[ModelCard(id=name) for name in service.models])

    @app.post("/v1/chat/completions")
    @app.post("/chat/completions")
    async def chat_completions(request: Request):
        check_key(request, service.settings.api_key)
        chat = service.parse(await read_body(request, service.limits.max_body_bytes, service.limits.body_timeout))
        slot = service.slots.take()
        if chat.model == PIPELINE_MODEL:
            completion = _pipeline_completion(service, chat, slot)
        else:
            completion = service.model_completion(chat, slot)
        if chat.stream:
            return StreamingResponse(completion.stream(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        return await _whole_unless_gone(request, completion)

    return app


async def _whole_unless_gone(request: Request, completion) -> Response:
    """The whole reply; a client that goes away first has its work cancelled, which gives its slot back."""
    reply = asyncio.ensure_future(completion.whole())
    gone = asyncio.ensure_future(_disconnected(request))
    await asyncio.wait({reply, gone}, return_when=asyncio.FIRST_COMPLETED)
    gone.cancel()
    if not reply.done():
        reply.cancel()
        return Response(status_code=499)  # nobody reads it
    return JSONResponse(reply.result().model_dump(exclude_none=True))


async def _disconnected(request: Request) -> None:
    """Returns when the client disconnects (the body has been read: the next message can only be that)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _pipeline_completion(service: Service, chat: ChatRequest, slot) -> PipelineCompletion:
    if not any(m.role == "user" and m.content.strip() for m in chat.messages):
        slot.release()
        raise Rejected(400, "the pipeline model needs a user message: the problem to solve")
    return PipelineCompletion(service.pipeline, service.pool, chat, slot)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(Rejected)
    async def rejected(request, err: Rejected):
        return err.response()

    @app.exception_handler(ReasonerError)
    async def user_error(request, err: ReasonerError):  # the pipeline refused the problem: the client's to fix
        return JSONResponse(error_body(str(err), "invalid_request_error", 400), 400)

    @app.exception_handler(HTTPException)
    async def no_route(request, err: HTTPException):
        message = f"no route {request.method} {request.url.path}; try POST /v1/chat/completions" \
            if err.status_code in (404, 405) else str(err.detail)
        return JSONResponse(error_body(message, "not_found", err.status_code), err.status_code)

    @app.exception_handler(Exception)
    async def server_error(request, err: Exception):  # a server bug: logged here, a plain 500 for the client
        log.error("chat completion failed", exc_info=err)
        return JSONResponse(error_body("the model failed on this request", "server_error", 500), 500)


class ChatServer:
    """The server on a socket bound at construction (port 0 picks a free one), run by `serve_forever`."""

    def __init__(self, backend: LocalBackend, host: str = "127.0.0.1", port: int = 8000, *,
                 model_name: str | None = None, max_tokens: int = 512, request_timeout: float = 600.0, **options):
        limits = Limits(**options.pop("limits", {}))
        self.settings = Settings(model_name or backend.name, max_tokens, request_timeout, limits=limits, **options)
        self.service = Service(backend, self.settings)
        self.socket = _listening_socket(host, port)
        config = uvicorn.Config(create_app(self.service), http=guarded_protocol(limits.max_connections),
                                timeout_keep_alive=limits.idle_timeout, timeout_graceful_shutdown=5,
                                lifespan="off", access_log=False, log_level="warning")
        self._server = uvicorn.Server(config)
        self._stopped = threading.Event()

    backend = property(lambda self: self.service.backend)
    model_name = property(lambda self: self.settings.model_name)

    @property
    def base_url(self) -> str:
        host, port = self.socket.getsockname()[:2]
        return f"http://{host}:{port}/v1"

    def serve_forever(self) -> None:
        try:
            self._server.run(sockets=[self.socket])
        finally:
            self._stopped.set()

    def shutdown(self) -> None:
        self._server.should_exit = True
        self._stopped.wait(timeout=30)

    def server_close(self) -> None:
        self.service.close()
        self.socket.close()


def _listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(2048)  # connections made before uvicorn starts wait in the backlog rather than being refused
    return sock
