"""The server: ``build_app`` wires a loaded model to the session store, the scheduler and the routes; ``serve``
runs it on uvicorn until SIGTERM or SIGINT, after which requests in flight finish (their writes acknowledged,
hence on disk) before the process ends."""

from __future__ import annotations

import logging
import signal
import threading
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from .. import __version__
from . import openai_routes, session_routes
from .auth import KeyRing
from .errors import APIError, from_http_status, server_error
from .guard import RequestGuard
from .scheduler import Scheduler
from .service import MemoryService
from .settings import ServerSettings
from .store import SessionStore

log = logging.getLogger("cometlm.serve")

_UNION_TAGS = ("str", "int", "float", "bool", "list", "dict", "none")


def build_app(model, settings: ServerSettings, model_id: str) -> FastAPI:
    """A FastAPI app serving ``model`` (a loaded ``CometForCausalLM`` with a tokenizer) as ``model_id``."""
    if model.tokenizer is None:
        raise ValueError("the server reads text: the model needs a tokenizer")
    keys = KeyRing.load(settings.api_keys) if settings.api_keys is not None else None
    store = SessionStore(settings.state_dir, model, settings.cache_bytes)
    recovered = store.recover()
    scheduler = Scheduler(model, settings.batch_window_ms, settings.max_batch)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        scheduler.start()
        log.info("serving %s (state fingerprint %s) from %s: %s", model_id, store.fingerprint, settings.state_dir,
                 ", ".join(f"{k} {v}" for k, v in recovered.items()))
        try:
            yield
        finally:
            scheduler.stop()
            sessions = len(store.index.list())
            store.close()
            log.info("stopped cleanly: %d sessions on disk in %s", sessions, settings.state_dir)

    # No /docs or /redoc: FastAPI's pages load their scripts from a CDN, which would then run with this API's
    # origin (the schema stays at /openapi.json).
    app = FastAPI(title="cometlm", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="CoMeT memory sessions and an OpenAI-compatible API (docs/SERVING.md).")
    app.state.keys, app.state.model_id, app.state.settings = keys, model_id, settings
    app.state.started = int(time.time())
    app.state.service = MemoryService(model, store, scheduler, settings)
    app.state.scheduler = scheduler
    app.include_router(openai_routes.router)
    app.include_router(session_routes.router)

    @app.exception_handler(APIError)
    async def api_error(request: Request, err: APIError):
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError):
        first = err.errors()[0]
        path = [str(p) for p in first.get("loc", ()) if p != "body" and not _is_union_tag(p)]
        param = ".".join(path) or None
        message = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
        body = APIError(400, message, param=param, code=first.get("type")).body()
        return JSONResponse(body, status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException):
        wrapped = from_http_status(err.status_code, str(err.detail))
        return JSONResponse(wrapped.body(), status_code=err.status_code, headers=getattr(err, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception):
        log.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse(server_error().body(), status_code=500)

    max_state_bytes = store.template.nbytes() + 8 * model.comet_config.chunk_size + (1 << 20)
    app.add_middleware(RequestGuard, max_body_bytes=settings.max_body_bytes, max_state_bytes=max_state_bytes,
                       allowed_hosts=settings.allowed_hosts)
    return app


def _is_union_tag(part) -> bool:
    return isinstance(part, str) and (part in _UNION_TAGS or "[" in part or part.startswith("function-"))


def serve(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Runs ``app`` until SIGTERM/SIGINT; returns after a clean shutdown (in-flight requests finished)."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, access_log=False, log_level=log_level,
                                           lifespan="on"))
    if threading.current_thread() is threading.main_thread():
        # uvicorn installs its own handlers while it runs and raises the signal again when it is done; this one
        # takes that second signal (and any before uvicorn's are in place) as "stop", so the process exits 0.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: setattr(server, "should_exit", True))
    server.run()
