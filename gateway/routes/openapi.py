"""``/openapi.json`` generated from the router and the msgspec types on each handler, and a ``/docs`` page.

Every route is listed: a handler without ``@documented`` still gets an entry (method, path, parameters).
Schemas come from ``msgspec.json.schema_components``; nothing is written by hand. The spec is built on the
first request (every route is registered by then) and kept. ``/docs`` is plain HTML rendered here from the
spec: no script, no CDN.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgspec
from aiohttp import web

from common import codec
from common.version import VERSION
from gateway.apidoc import ApiDoc, doc_of, documented
from gateway.keys import SETTINGS
from gateway.schemas import ErrorResponse, OpenAIErrorResponse, ValidationErrorResponse

OPENAPI_VERSION = "3.1.0"
TITLE = "Prem Daemon"
DESCRIPTION = "Swagger Documentation for Prem Daemon APIs (premd: generated from its handlers' types)."
REF_TEMPLATE = "#/components/schemas/{name}"
_ANY_METHODS = ("get", "post", "put", "patch", "delete")
_PATH_PARAM = re.compile(r"{([^}:]+)}")
_HEALTH_PATHS = frozenset({"/v1/", "/v1"})

Json = dict[str, Any]


@dataclass(slots=True)
class SpecCache:
    json: bytes | None = None
    html: bytes | None = None


CACHE = web.AppKey("openapi_cache", SpecCache)


@dataclass(frozen=True, slots=True)
class _Op:
    path: str
    method: str
    doc: ApiDoc | None


def _operations(app: web.Application) -> Iterator[_Op]:
    seen: set[tuple[str, str]] = set()
    ops: list[_Op] = []
    for route in app.router.routes():
        resource = route.resource
        if resource is None:
            continue
        path = resource.canonical
        methods = _ANY_METHODS if route.method == "*" else (route.method.lower(),)
        for method in methods:
            if (path, method) not in seen:
                seen.add((path, method))
                ops.append(_Op(path, method, doc_of(route.handler)))
    # aiohttp registers HEAD beside every GET: keep HEAD only where it was asked for on its own.
    for op in ops:
        if op.method != "head" or (op.path, "get") not in seen:
            yield op


def _schemas(types: list[Any]) -> tuple[dict[Any, Json], Json]:
    try:
        found, components = msgspec.json.schema_components(types, ref_template=REF_TEMPLATE)
        return dict(zip(types, found, strict=True)), components
    except TypeError:  # one type msgspec cannot describe must not hide the others
        schemas: dict[Any, Json] = {}
        components = {}
        for type_ in types:
            try:
                (schema,), more = msgspec.json.schema_components([type_], ref_template=REF_TEMPLATE)
            except TypeError:
                schema, more = {}, {}
            schemas[type_] = schema
            components.update(more)
        return schemas, components


def _operation_id(method: str, path: str) -> str:
    return method + "_" + (re.sub(r"[^A-Za-z0-9]+", "_", path).strip("_") or "root")


def _operation(op: _Op, schemas: dict[Any, Json], secured: bool) -> Json:
    doc = op.doc
    tag = (doc.tags[0] if doc and doc.tags else None) or op.path.strip("/").split("/")[0] or "root"
    out: Json = {
        "operationId": _operation_id(op.method, op.path),
        "summary": doc.summary if doc else f"{op.method.upper()} {op.path}",
        "tags": [tag],
    }
    params = [
        {"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in _PATH_PARAM.findall(op.path)
    ]
    if doc:
        params += [
            {"name": n, "in": "query", "required": False, "description": d, "schema": {"type": "string"}}
            for n, d in doc.query.items()
        ]
    if params:
        out["parameters"] = params
    if doc and doc.body is not None:
        out["requestBody"] = {"required": True, "content": {"application/json": {"schema": schemas[doc.body]}}}
    ok: Json = {"description": "OK"}
    if doc and doc.response is not None:
        ok["content"] = {doc.content_type: {"schema": schemas[doc.response]}}
    elif doc:
        ok["content"] = {doc.content_type: {}}
    responses: Json = {"200": ok}
    # --- packages: pipeline ---
    if doc and doc.upload_field:
        field_schema = {"type": "object", "properties": {doc.upload_field: {"type": "string", "format": "binary"}}}
        field_schema["required"] = [doc.upload_field]
        out["requestBody"] = {"required": True, "content": {"multipart/form-data": {"schema": field_schema}}}
    for status in doc.also_ok if doc else ():
        responses[str(status)] = {**ok, "description": "Accepted"}
    envelope = OpenAIErrorResponse.__name__ if tag == "openai" else ErrorResponse.__name__
    for status, description in sorted((doc.errors if doc else {}).items()):
        schema: Json = {"$ref": REF_TEMPLATE.format(name=envelope)}
        if status == 422 and tag != "openai":
            # reliability (issue 9): a 422 is either premd's envelope or FastAPI's list of validation issues
            # (an invalid body or query); found by fuzzing the schema.
            schema = {"anyOf": [schema, {"$ref": REF_TEMPLATE.format(name=ValidationErrorResponse.__name__)}]}
        responses[str(status)] = {"description": description, "content": {"application/json": {"schema": schema}}}
    if secured:
        # reliability (issue 9): the guard refuses in premd's envelope on every route (OpenAI ones too), and
        # fuzzing with and without the token checks the 401s against this schema.
        refused = {"application/json": {"schema": {"$ref": REF_TEMPLATE.format(name=ErrorResponse.__name__)}}}
        responses.setdefault("401", {"description": "missing or wrong bearer token", "content": refused})
    out["responses"] = responses
    if op.path in _HEALTH_PATHS:
        out["security"] = []
    return out


def build_spec(app: web.Application) -> Json:
    """The OpenAPI document of every route ``app`` serves."""
    secured = app[SETTINGS].api_token is not None
    ops = list(_operations(app))
    types: list[Any] = [ErrorResponse, OpenAIErrorResponse, ValidationErrorResponse]
    for op in ops:
        for type_ in (op.doc.body, op.doc.response) if op.doc else ():
            if type_ is not None and type_ not in types:
                types.append(type_)
    schemas, components = _schemas(types)
    paths: dict[str, Json] = {}
    used: set[str] = set()
    for op in ops:
        item = _operation(op, schemas, secured and op.path not in _HEALTH_PATHS)
        # --- packages: pipeline --- /v1/packages and /v1/packages/ are both routes: their ids must differ.
        if item["operationId"] in used:
            item["operationId"] += "_slash" if op.path.endswith("/") else "_no_slash"
        used.add(item["operationId"])
        paths.setdefault(op.path, {})[op.method] = item
    spec: Json = {
        "openapi": OPENAPI_VERSION,
        "info": {"title": TITLE, "version": VERSION, "description": DESCRIPTION},
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": components,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        },
    }
    if secured:
        spec["security"] = [{"bearerAuth": []}]
    return spec


def render_html(spec: Json) -> str:
    """A readable, self-contained page: one table row per operation, then every schema."""
    esc = html.escape
    rows: list[str] = []
    for path, item in spec["paths"].items():
        for method, op in item.items():
            params = ", ".join(esc(p["name"]) + ("" if p["in"] == "path" else "?") for p in op.get("parameters", []))
            body = _schema_name(op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema"))
            ok = op["responses"]["200"].get("content", {})
            answer = ", ".join(f"{esc(ct)} {_schema_name(v.get('schema'))}".strip() for ct, v in ok.items())
            errors = ", ".join(f"{s} {esc(r['description'])}" for s, r in op["responses"].items() if s != "200")
            rows.append(
                f"<tr><td class=m>{esc(method.upper())}</td><td><code>{esc(path)}</code></td>"
                f"<td>{esc(op['summary'])}</td><td>{params}</td><td>{body}</td><td>{answer}</td><td>{errors}</td></tr>"
            )
    schemas = "".join(
        f'<details id="{esc(name)}"><summary>{esc(name)}</summary><pre>{esc(_pretty(schema))}</pre></details>'
        for name, schema in sorted(spec["components"]["schemas"].items())
    )
    info = spec["info"]
    return (
        "<!doctype html><html><head><meta charset=utf-8>"
        f"<title>{esc(info['title'])} API</title><style>"
        "body{font:14px system-ui,sans-serif;margin:2em}table{border-collapse:collapse;width:100%}"
        "td,th{border:1px solid #ccc;padding:4px 6px;text-align:left;vertical-align:top}"
        "td.m{font-weight:bold;font-family:monospace}pre{background:#f6f6f6;padding:8px;overflow:auto}"
        "</style></head><body>"
        f"<h1>{esc(info['title'])} <small>{esc(info['version'])}</small></h1><p>{esc(info['description'])} "
        '<a href="/openapi.json">openapi.json</a></p>'
        "<table><tr><th>Method</th><th>Path</th><th>Summary</th><th>Parameters (? = query)</th>"
        "<th>Body</th><th>200</th><th>Errors</th></tr>" + "".join(rows) + "</table>"
        f"<h2>Schemas</h2>{schemas}</body></html>"
    )


def _pretty(schema: Json) -> str:
    return msgspec.json.format(codec.encode(schema)).decode()


def _schema_name(schema: Json | None) -> str:
    if not schema:
        return ""
    ref = schema.get("$ref") or schema.get("items", {}).get("$ref")
    if not isinstance(ref, str):
        return html.escape(str(schema.get("type", "")))
    name = html.escape(ref.rsplit("/", 1)[-1])
    label = f"{name}[]" if "items" in schema else name
    return f'<a href="#{name}">{label}</a>'


def _cached(app: web.Application) -> SpecCache:
    cache = app[CACHE]
    if cache.json is None:
        spec = build_spec(app)
        cache.json = codec.encode(spec)
        cache.html = render_html(spec).encode()
    return cache


routes = web.RouteTableDef()


@routes.get("/openapi.json")
@documented("This document: OpenAPI 3.1, generated from the handlers", tags=("docs",))
async def openapi_json(request: web.Request) -> web.Response:
    body = _cached(request.app).json
    assert body is not None
    return web.Response(body=body, content_type="application/json")


@routes.get("/docs")
@documented("Readable API documentation (HTML)", content_type="text/html", tags=("docs",))
async def docs(request: web.Request) -> web.Response:
    body = _cached(request.app).html
    assert body is not None
    return web.Response(body=body, content_type="text/html")
