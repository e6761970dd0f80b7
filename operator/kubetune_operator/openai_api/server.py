"""The HTTP server: the fine-tuning part of the OpenAI REST API on FastAPI, over one backend.

Routes (all under ``/v1``, as the ``openai`` client's ``base_url`` expects):

    POST   /files                      GET /files            GET /files/{id}
    GET    /files/{id}/content         DELETE /files/{id}
    POST   /fine_tuning/jobs           GET /fine_tuning/jobs GET /fine_tuning/jobs/{id}
    POST   /fine_tuning/jobs/{id}/cancel | /pause | /resume
    GET    /fine_tuning/jobs/{id}/events
    GET    /fine_tuning/jobs/{id}/checkpoints

Everything else, and any error, is answered in the API's error shape with the
status code the ``openai`` client maps to its exception types.

The OpenAPI schema is served at ``/v1/openapi.json``: each route's parameters,
the job-creation body (:data:`mapping.CREATE_REQUEST_SCHEMA`), the bearer token
and ``OpenAI-Project`` header, and the error shape of 4xx answers. Schemathesis
fuzzes the server from it (tests/support/fuzz_http.py).
"""
from __future__ import annotations

import dataclasses
import json
import logging
from typing import Annotated, Any, Literal, Protocol

from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from kubetune_api import documents

from . import mapping
from .errors import ApiError, invalid

log = logging.getLogger("kubetune.api")


@dataclasses.dataclass(frozen=True)
class Caller:
    """Who is asking: the bearer token (a Kubernetes token on the cluster backend) and the project (namespace)."""

    token: str | None
    project: str | None


class Backend(Protocol):
    def create_file(self, caller: Caller, filename: str, purpose: str, data: bytes) -> dict[str, Any]: ...
    def list_files(self, caller: Caller, purpose: str | None) -> list[dict[str, Any]]: ...
    def get_file(self, caller: Caller, file_id: str) -> dict[str, Any]: ...
    def file_content(self, caller: Caller, file_id: str) -> bytes: ...
    def delete_file(self, caller: Caller, file_id: str) -> dict[str, Any]: ...
    def create_job(self, caller: Caller, body: Any) -> dict[str, Any]: ...
    def list_jobs(self, caller: Caller) -> list[dict[str, Any]]: ...
    def get_job(self, caller: Caller, job_id: str) -> dict[str, Any]: ...
    def cancel_job(self, caller: Caller, job_id: str) -> dict[str, Any]: ...
    def pause_job(self, caller: Caller, job_id: str) -> dict[str, Any]: ...
    def resume_job(self, caller: Caller, job_id: str) -> dict[str, Any]: ...
    def list_events(self, caller: Caller, job_id: str) -> list[dict[str, Any]]: ...
    def list_checkpoints(self, caller: Caller, job_id: str) -> list[dict[str, Any]]: ...


def _caller(request: Request, api_key: str | None) -> Caller:
    auth = request.headers.get("authorization", "")
    token = auth[len("bearer "):].strip() if auth.lower().startswith("bearer ") else None
    if api_key is not None and token != api_key:
        raise ApiError(401, "Incorrect API key provided", code="invalid_api_key")
    return Caller(token=token or None, project=request.headers.get("openai-project") or None)


# ?limit= of the list routes: FastAPI checks it (a 400 naming `limit` otherwise) and publishes the bounds.
Limit = Annotated[int | None, Query(ge=1, le=100, description="items per page, 1 to 100")]

_ERROR_SCHEMA = {
    "type": "object",
    "title": "Error",
    "required": ["error"],
    "properties": {"error": {
        "type": "object",
        "required": ["message", "type", "param", "code"],
        "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                       "param": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                       "code": {"anyOf": [{"type": "string"}, {"type": "null"}]}},
    }},
}


def _openapi_schema(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema of the routes, plus what they read by hand: the bearer token, the OpenAI-Project header,
    the job-creation body; errors in the API's shape (FastAPI's own 422 entry describes an answer this server never gives)."""
    schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
    components = schema.setdefault("components", {})
    components["securitySchemes"] = {"bearer": {
        "type": "http", "scheme": "bearer",
        "description": "local backend: the --api-key, if the server has one; cluster backend: the caller's Kubernetes token"}}
    components.setdefault("schemas", {})["Error"] = _ERROR_SCHEMA
    for name in ("HTTPValidationError", "ValidationError"):
        components["schemas"].pop(name, None)
    error = {"description": "an error in the OpenAI API's shape; `param` names the request field at fault",
             "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    for path, operations in schema.get("paths", {}).items():
        if not path.startswith("/v1/") or path == app.openapi_url:
            continue
        for operation in operations.values():
            operation["security"] = [{"bearer": []}, {}]
            operation.setdefault("parameters", []).append({
                "name": "OpenAI-Project", "in": "header", "required": False, "schema": {"type": "string"},
                "description": "cluster backend: the namespace to act in (default: the service account's, else --namespace)"})
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            responses["4XX"] = error
    schema["paths"]["/v1/fine_tuning/jobs"]["post"]["requestBody"] = {
        "required": True, "content": {"application/json": {"schema": mapping.CREATE_REQUEST_SCHEMA}}}
    return schema


def create_app(backend: Backend, *, api_key: str | None = None) -> FastAPI:
    """The ASGI app; ``api_key`` (local backend) makes every request present that bearer token."""
    app = FastAPI(title="kubetune fine-tuning API (OpenAI-compatible)", docs_url=None, redoc_url=None, openapi_url="/v1/openapi.json")

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _openapi_schema(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers={"x-should-retry": "false"})

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        err = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path")]
        param = ".".join(loc) or None
        return await _api_error(request, invalid(f"{param or 'request'}: {err.get('msg', 'invalid')}", param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            e = ApiError(404, f"Unknown request URL: {request.method} {request.url.path}. kubetune serves the files and "
                              f"fine-tuning endpoints only (see docs/api-openai.md).", code="unknown_url")
        elif exc.status_code == 405:
            e = ApiError(405, f"{request.method} is not allowed on {request.url.path}", code="method_not_allowed")
        else:
            e = ApiError(exc.status_code, str(exc.detail))
        return await _api_error(request, e)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return await _api_error(request, ApiError(500, f"internal error: {type(exc).__name__}: {exc}", code="internal_error"))

    async def call(fn: Any, *args: Any) -> Any:
        return await run_in_threadpool(fn, *args)

    # ----------------------------------------------------------------- files
    @app.post("/v1/files")
    async def create_file(request: Request, file: UploadFile = File(...),  # noqa: B008
                          purpose: str = Form(..., json_schema_extra={"enum": ["fine-tune"]})) -> Any:
        caller = _caller(request, api_key)
        data = await file.read()
        return await call(backend.create_file, caller, file.filename or "upload.jsonl", purpose, data)

    @app.get("/v1/files")
    async def list_files(request: Request, purpose: str | None = None, after: str | None = None, limit: Limit = None,
                         order: Literal["asc", "desc"] = "desc") -> Any:
        caller = _caller(request, api_key)
        items = await call(backend.list_files, caller, purpose)
        if order == "asc":
            items = list(reversed(items))
        return mapping.page(items, after, limit, default_limit=100)

    @app.get("/v1/files/{file_id}")
    async def get_file(request: Request, file_id: str) -> Any:
        return await call(backend.get_file, _caller(request, api_key), file_id)

    @app.get("/v1/files/{file_id}/content")
    async def file_content(request: Request, file_id: str) -> Response:
        data = await call(backend.file_content, _caller(request, api_key), file_id)
        return Response(content=data, media_type="application/octet-stream")

    @app.delete("/v1/files/{file_id}")
    async def delete_file(request: Request, file_id: str) -> Any:
        return await call(backend.delete_file, _caller(request, api_key), file_id)

    # ------------------------------------------------------------------ jobs
    @app.post("/v1/fine_tuning/jobs")
    async def create_job(request: Request) -> Any:
        caller = _caller(request, api_key)
        try:
            body = json.loads(await request.body())
            documents.check_size(body)
            json.dumps(body, ensure_ascii=False).encode()  # JSON's \ud800 escapes decode to lone surrogates: not text
        except RecursionError:
            raise invalid(f"the request body is nested deeper than {documents.MAX_DEPTH} levels") from None
        except documents.Unreadable as e:
            raise invalid(f"the request body is {str(e).removeprefix('not a manifest: ')}") from None
        except UnicodeEncodeError:
            raise invalid("the request body is not valid JSON: a \\u escape gives a lone UTF-16 surrogate, which is not a character") from None
        except ValueError:
            raise invalid("the request body is not valid JSON") from None
        return await call(backend.create_job, caller, body)

    @app.get("/v1/fine_tuning/jobs")
    async def list_jobs(request: Request, after: str | None = None, limit: Limit = None) -> Any:
        caller = _caller(request, api_key)
        items = await call(backend.list_jobs, caller)
        wanted = {k[len("metadata["):-1]: v for k, v in request.query_params.items() if k.startswith("metadata[") and k.endswith("]")}
        if wanted:
            items = [j for j in items if all((j.get("metadata") or {}).get(k) == v for k, v in wanted.items())]
        return mapping.page(items, after, limit)

    @app.get("/v1/fine_tuning/jobs/{job_id}")
    async def get_job(request: Request, job_id: str) -> Any:
        return await call(backend.get_job, _caller(request, api_key), job_id)

    @app.post("/v1/fine_tuning/jobs/{job_id}/cancel")
    async def cancel_job(request: Request, job_id: str) -> Any:
        return await call(backend.cancel_job, _caller(request, api_key), job_id)

    @app.post("/v1/fine_tuning/jobs/{job_id}/pause")
    async def pause_job(request: Request, job_id: str) -> Any:
        return await call(backend.pause_job, _caller(request, api_key), job_id)

    @app.post("/v1/fine_tuning/jobs/{job_id}/resume")
    async def resume_job(request: Request, job_id: str) -> Any:
        return await call(backend.resume_job, _caller(request, api_key), job_id)

    @app.get("/v1/fine_tuning/jobs/{job_id}/events")
    async def list_events(request: Request, job_id: str, after: str | None = None, limit: Limit = None) -> Any:
        items = await call(backend.list_events, _caller(request, api_key), job_id)
        return mapping.page(items, after, limit)

    @app.get("/v1/fine_tuning/jobs/{job_id}/checkpoints")
    async def list_checkpoints(request: Request, job_id: str, after: str | None = None, limit: Limit = None) -> Any:
        items = await call(backend.list_checkpoints, _caller(request, api_key), job_id)
        return mapping.page(items, after, limit, default_limit=10)

    @app.get("/healthz")
    async def healthz() -> Any:
        return {"ok": True}

    return app
