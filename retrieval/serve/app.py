"""The HTTP API (FastAPI): /health, /status, /search, /documents, OpenAPI docs at /docs.

Every error is JSON, ``{"error": "one line"}`` with a 4xx status (5xx only for a bug, still without a traceback); the
request body, the query's length and k are bounded; with an API key every route but /health needs
``Authorization: Bearer KEY``. Route functions are plain ``def``: FastAPI runs them in its thread pool, so many
searches run at once (their query encodings batched, batching.py) while a write waits on the index's write lock.
"""

from __future__ import annotations

import hmac
import json
import math
import logging
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator
from starlette.exceptions import HTTPException

from indexes import IndexBusyError, IndexCorruptError
from modernretrieval.errors import ModernRetrievalError

from .collection import DocumentIn
from .service import Service, Unsupported
from .warm import json_score

MAX_BODY = 8 << 20  # bytes: a batch of documents; a 10 MB body is refused before it is read in full
MAX_QUERY = 2000  # characters
MAX_K = 1000
MAX_BATCH = 1000  # documents per POST /documents
MAX_ID = 512
DRAIN = 8  # a body over the limit is read and dropped up to this many limits, then the connection closes
log = logging.getLogger("mret.serve")

Scalar = str | int | float | bool
Glob = Annotated[str, StringConstraints(min_length=1, max_length=500)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # unknown fields and wrong types are 422s


class SearchRequest(Strict):
    query: Annotated[str, StringConstraints(min_length=1, max_length=MAX_QUERY)]
    k: int = Field(10, ge=1, le=MAX_K)
    mode: Literal["hybrid", "semantic", "lexical"] | None = None
    path_glob: Glob | list[Glob] | None = None
    type: Glob | list[Glob] | None = None
    filter: dict[str, Scalar | dict[Literal["in"], list[Scalar]]] | None = Field(
        None, description='Collections: metadata equality ({"lang": "en"}) or membership ({"year": {"in": [2023]}}).')


class SearchResponse(BaseModel):
    results: list[dict[str, Any]]
    took_ms: float


class DocumentModel(Strict):
    id: Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID)]
    text: Annotated[str, StringConstraints(min_length=1)]
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("metadata")
    @classmethod
    def _finite(cls, metadata: dict[str, Any]) -> dict[str, Any]:
        """NaN and infinities parse (Python's json reads them) but are not JSON: SQLite's JSON functions then
        refuse the stored row, and answers would carry them."""
        if not _all_finite(metadata):
            raise ValueError("metadata holds NaN or an infinite number, which JSON cannot carry")
        return metadata


def _all_finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_all_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_all_finite(v) for v in value)
    return True


class DocumentsRequest(Strict):
    documents: list[DocumentModel] = Field(min_length=1, max_length=MAX_BATCH)


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(message.split())}, status_code=status)


def _validation_message(exc: RequestValidationError) -> str:
    """The first problem, as a line that names the field: "k: Input should be less than or equal to 1000"."""
    first = exc.errors()[0]
    loc = tuple(first.get("loc", ()))
    if first.get("type") == "json_invalid":
        return f"the body is not valid JSON (at character {loc[-1]})" if len(loc) > 1 else "the body is not valid JSON"
    if loc == ("body",):
        return "the body must be a JSON object" if first.get("type") != "missing" else "a JSON body is required"
    where = ".".join(str(part) for part in loc if part != "body")
    return f"{where}: {first.get('msg', 'invalid')}" if where else str(first.get("msg", "invalid request"))


class BodyLimit:
    """Pure ASGI: a body over ``limit`` bytes gets 413 before FastAPI sees it (counted as it arrives, never held
    whole); a body is JSON whatever its declared content type."""

    def __init__(self, app: Any, limit: int = MAX_BODY):
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]], send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.limit:
                return await self._too_large(scope, receive, send, more)
        body = b"".join(chunks)
        sent = False
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as bad:
            return await error(400, f"the body is not UTF-8 (byte {bad.start})")(scope, receive, send)
        if body:  # the API speaks JSON only: a body is parsed as JSON whatever its declared type (curl -d)
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: dict, receive: Callable[[], Awaitable[dict]], send: Callable,
                         more: bool) -> None:
        """413, after reading (and dropping) the rest of a body up to a few times the limit: a client that sends its
        whole body before reading the answer would otherwise wait forever; beyond that the connection is closed."""
        drained = 0
        while more and drained < DRAIN * self.limit:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            drained += len(message.get("body", b""))
            more = message.get("more_body", False)
        response = error(413, f"the request body is over {self.limit} bytes")
        if more:
            response.headers["Connection"] = "close"
        await response(scope, receive, send)


class Auth:
    """Pure ASGI: with an API key, ``Authorization: Bearer KEY`` on every route but /health. ``keys``: the API key and
    the local token of the server file (which ``mret search`` and ``mret stop`` read), either one passes."""

    def __init__(self, app: Any, required: bool, keys: list[str]):
        self.app, self.required, self.keys = app, required, [k.encode() for k in keys if k]

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and self.required and scope["path"] != "/health":
            header = dict(scope["headers"]).get(b"authorization", b"")
            token = header[7:] if header[:7].lower() == b"bearer " else b""
            if not any(hmac.compare_digest(token, key) for key in self.keys):
                response = error(401, "missing or wrong API key (send Authorization: Bearer KEY)")
                response.headers["WWW-Authenticate"] = "Bearer"
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


class Counters:
    """What the server has done, for /health (and the tests that check `mret search` went through a server)."""

    def __init__(self) -> None:
        self.searches = 0
        self.last_request = time.monotonic()
        self._lock = threading.Lock()

    def searched(self) -> None:
        with self._lock:
            self.searches += 1
            self.last_request = time.monotonic()


def create_app(service: Service, api_key: str | None = None, local_token: str | None = None,
               on_shutdown: Callable[[], None] | None = None, private: bool = False) -> tuple[Any, FastAPI]:
    """(the ASGI app to run, the FastAPI app inside it) for ``service``. ``local_token``: accepted wherever the API
    key is, and the only key that /shutdown takes. ``private``: a key (the API key or the token) is required even
    without an API key (the background server that ``mret search --keep-warm`` starts: only whoever can read the
    index folder's server file may use it; a loopback port is open to every local user)."""
    app = FastAPI(title="modernretrieval", version="1", summary="Search a codebase or a document collection.")
    counters = app.state.counters = Counters()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error(422, _validation_message(exc))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(ModernRetrievalError)
    async def user_error(request: Request, exc: ModernRetrievalError) -> JSONResponse:
        if isinstance(exc, Unsupported):
            return error(409, str(exc))
        if isinstance(exc, IndexBusyError):
            return error(503, str(exc))
        if isinstance(exc, IndexCorruptError):
            return error(500, f"{exc}; the index is damaged: `mret index --rebuild PATH` builds it again")
        return error(400, str(exc))

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s", request.url.path)  # the traceback stays in the server's log
        return error(500, f"internal error ({type(exc).__name__}); see the server's log")

    @app.get("/health", summary="200 once the model and the index are loaded")
    async def health() -> dict[str, Any]:  # (async: answered on the event loop, no thread hop)
        torch = sys.modules.get("torch")  # the threads a call gets in a thread other than the main one
        return {"status": "ok", "pid": os.getpid(), "kind": service.kind, "searches": counters.searches,
                "threads": torch.get_num_threads() if torch is not None else None}

    @app.get("/status", summary="What the index holds (as `mret status --json` prints)")
    def status() -> dict[str, Any]:
        return service.status()

    @app.post("/search", response_model=SearchResponse, summary="The k best results for a query")
    def search(request: SearchRequest) -> Response:
        started = time.perf_counter()
        results = service.search(request.query, request.k, request.mode, request.path_glob, request.type,
                                 request.filter)
        counters.searched()
        for result in results:  # NaN or an infinity is not JSON (allow_nan below): null, as `mret search --json`
            result["score"] = json_score(result["score"])
        took_ms = round((time.perf_counter() - started) * 1000, 3)
        # serialized here: FastAPI passes a Response through, without jsonable_encoder and the response model's
        # validation (0.2-0.3 ms a request of CPU that 16 clients share; README); the schema keeps SearchResponse
        body = json.dumps({"results": results, "took_ms": took_ms}, ensure_ascii=False, allow_nan=False,
                          separators=(",", ":"))  # as Starlette's JSONResponse writes it
        return Response(body, media_type="application/json")

    @app.post("/documents", summary="Add or replace a batch of documents (collections), in one commit")
    def put_documents(request: DocumentsRequest) -> dict[str, Any]:
        documents = [DocumentIn(d.id, d.text, d.metadata) for d in request.documents]
        generation = service.put(documents)
        return {"added_or_replaced": len(documents), "generation": generation}

    @app.delete("/documents/{doc_id:path}", summary="Remove a document (collections; an id may hold '/')")
    def delete_document(doc_id: str) -> dict[str, Any]:
        if not service.delete(doc_id):
            raise HTTPException(404, f"no document {doc_id!r}")
        return {"deleted": doc_id}

    @app.post("/shutdown", include_in_schema=False)
    def shutdown(request: Request) -> dict[str, Any]:
        header = request.headers.get("authorization", "")
        if not local_token or not hmac.compare_digest(header.encode(), f"Bearer {local_token}".encode()):
            raise HTTPException(403, "only `mret stop` (the server file's token) may stop this server")
        if on_shutdown is not None:
            on_shutdown()
        return {"stopping": True}

    # the key is checked first: a client without it is refused before its body is read
    return Auth(BodyLimit(app), bool(api_key) or private, [key for key in (api_key, local_token) if key]), app
