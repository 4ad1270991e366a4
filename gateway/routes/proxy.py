"""``/proxy/<service id>/<path>``: forward any request to a running service, streaming both ways.

Method, path (as sent, still percent-encoded), query, headers and body go through; nothing is buffered:
each chunk read from one side is written to the other at once, so chat tokens arrive as they are produced
and uploads and downloads of any size stream (the proxy is not bound by the API's body limit).
WebSocket upgrades are bridged frame by frame. Connections to services are pooled (keep-alive).

- unknown service (neither in the catalog nor observed): 404;
- starting: 503 with ``Retry-After``;
- stopped, failed, pulling, ...: 409 with the reason;
- the service does not answer: 502.

Hop-by-hop headers are dropped; ``X-Forwarded-For/-Proto/-Host/-Prefix`` are set; when premd has an API
token, the client's ``Authorization`` (premd's token) is not passed on. Bodies are never decompressed or
re-encoded; a service's own CORS headers are replaced by premd's policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from urllib.parse import unquote_plus

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from common.errors import Code
from gateway.apidoc import documented
from gateway.errors import ApiError, as_premd
from gateway.keys import SETTINGS, VIEW
from gateway.routes.metrics import METRICS, Metrics
from gateway.security import TOKEN_QUERY

logger = logging.getLogger(__name__)

RETRY_AFTER_S = "5"
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "expect",  # aiohttp already answered 100-continue to the client
    }
)
_WS_HANDSHAKE = frozenset(
    {"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions", "sec-websocket-protocol"}
)

CLIENT = web.AppKey("proxy_client", aiohttp.ClientSession)


async def client_ctx(app: web.Application) -> AsyncIterator[None]:
    """One pooled client for every service: keep-alive connections, no cookie jar, no decompression."""
    settings = app[SETTINGS]
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30.0),
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=settings.request_timeout_s),
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
    )
    app[CLIENT] = session
    yield
    await session.close()


def resolve(app: web.Application, service_id: str) -> str:
    """``host:port`` of a ready service, else raises the ApiError saying why it cannot take requests."""
    view = app[VIEW]
    state = view.state(service_id)
    if state is None:
        if view.catalog.get(service_id) is None:
            raise ApiError(f"no service {service_id!r}", 404, Code.SERVICE_NOT_FOUND)
        raise ApiError(f"service {service_id!r} is not running", 409, Code.SERVICE_NOT_RUNNING)
    if state.phase == "ready" and state.host_port:
        return f"{app[SETTINGS].service_host}:{state.host_port}"
    if state.phase in ("starting", "ready"):
        raise ApiError(
            f"service {service_id!r} is starting", 503, Code.SERVICE_NOT_READY, {"Retry-After": RETRY_AFTER_S}
        )
    reason = state.last_error or state.phase
    raise ApiError(f"service {service_id!r} is not running: {reason}", 409, Code.SERVICE_NOT_RUNNING)


def _upstream_path(request: web.Request) -> str:
    """The path after ``/proxy/<id>``, still encoded, with the query (premd's query token removed)."""
    parts = request.rel_url.raw_path.split("/", 3)
    return ("/" + parts[3] if len(parts) > 3 else "/") + forwarded_query(request)


def forwarded_query(request: web.Request) -> str:
    """``?<query>`` as sent (still encoded) minus premd's ``access_token``; "" when nothing is left.

    Keys are compared decoded, as the token check reads them: ``access%5Ftoken=`` is the same parameter.
    """
    query = request.rel_url.raw_query_string
    if query and request.app[SETTINGS].api_token:
        query = "&".join(p for p in query.split("&") if unquote_plus(p.partition("=")[0]) != TOKEN_QUERY)
    return "?" + query if query else ""


def forward_headers(request: web.Request, prefix: str, websocket: bool = False) -> CIMultiDict[str]:
    src = request.headers
    drop = HOP_BY_HOP
    if connection := src.get("Connection"):
        drop = drop | {token.strip().lower() for token in connection.split(",")}
    if websocket:
        drop = drop | _WS_HANDSHAKE
    strip_auth = request.app[SETTINGS].api_token is not None
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in src.items():
        lower = name.lower()
        if lower in drop or (strip_auth and lower == "authorization"):
            continue
        out.add(name, value)
    peer = request.remote or ""
    previous = src.get("X-Forwarded-For")
    out["X-Forwarded-For"] = f"{previous}, {peer}" if previous else peer
    out["X-Forwarded-Proto"] = request.scheme
    out["X-Forwarded-Host"] = src.get("Host", "")
    if prefix:
        out["X-Forwarded-Prefix"] = prefix
    return out


def _response_headers(upstream: aiohttp.ClientResponse) -> CIMultiDict[str]:
    out: CIMultiDict[str] = CIMultiDict()
    drop = HOP_BY_HOP
    if connection := upstream.headers.get("Connection"):
        drop = drop | {token.strip().lower() for token in connection.split(",")}
    for name, value in upstream.headers.items():
        lower = name.lower()
        if lower in drop or lower.startswith("access-control-"):
            continue
        out.add(name, value)
    return out


SMALL_BODY = 64 * 1024
"""Bodies of known length up to this size are forwarded in one piece; anything else streams."""


async def _counted(content: aiohttp.StreamReader, tally: list[int]) -> AsyncIterator[bytes]:
    async for chunk in content.iter_any():
        tally[0] += len(chunk)
        yield chunk


# --- security (issue 10): a page served through the proxy runs in an opaque origin ---
SANDBOX_CSP = "sandbox allow-scripts allow-forms"
"""Scripts and forms work; without allow-same-origin the page's origin is ``null``: it cannot read premd's API
(same-origin reads) nor pass its origin checks (``Origin: null`` is refused)."""


def sandbox_csp(app: web.Application, service_id: str) -> str | None:
    """The Content-Security-Policy for the service's proxied answers; None when its manifest opts out."""
    entry = app[VIEW].catalog.get(service_id)
    if entry is not None and not entry.manifest.proxy_sandbox:
        return None
    return SANDBOX_CSP


def _sandboxed(headers: CIMultiDict[str], app: web.Application, service_id: str) -> CIMultiDict[str]:
    if csp := sandbox_csp(app, service_id):
        headers.add("Content-Security-Policy", csp)  # beside the service's own: browsers enforce both
    return headers


async def forward(
    request: web.Request, service_id: str, target: str, path_qs: str, prefix: str, body: bytes | None = None
) -> web.StreamResponse:
    """Send ``request`` (or ``body`` read earlier) to ``http://target/path_qs``, stream the answer back."""
    if request.headers.get("Upgrade", "").lower() == "websocket" and request.method == "GET":
        return await _bridge_websocket(request, service_id, target, path_qs, prefix)
    metrics = request.app[METRICS]
    url = URL(f"http://{target}{path_qs}", encoded=True)
    sent = [len(body) if body is not None else 0]
    data: bytes | AsyncIterator[bytes] | None = body
    if body is None and request.body_exists:
        if request.content_length is not None and request.content_length <= SMALL_BODY:
            # Small and of known length: one write with its Content-Length, not a chunked stream.
            body = data = await request.read()
            sent[0] = len(body)
        else:
            data = _counted(request.content, sent)
    headers = forward_headers(request, prefix)
    if body is not None:
        headers["Content-Length"] = str(len(body))
    start = time.perf_counter()
    try:
        upstream = await request.app[CLIENT].request(
            request.method, url, headers=headers, data=data, allow_redirects=False
        )
    except aiohttp.ClientError as exc:
        metrics.proxy_requests.inc((service_id, "502"))
        logger.info("proxy %s: %s %s failed: %r", service_id, request.method, path_qs, exc)
        raise ApiError(f"service {service_id!r} did not answer", 502, Code.PROXY_UNREACHABLE) from None
    received = 0
    try:
        metrics.proxy_upstream_latency.observe((service_id,), time.perf_counter() - start)
        metrics.proxy_requests.inc((service_id, str(upstream.status)))
        small = upstream.content_length is not None and upstream.content_length <= SMALL_BODY
        if small and request.method != "HEAD":
            # A small answer of known length (not a stream): read it whole and send it in one write.
            try:
                payload = await upstream.read()
            except aiohttp.ClientError as exc:
                logger.info("proxy %s: service closed mid-response: %r", service_id, exc)
                raise ApiError(f"service {service_id!r} broke off its answer", 502, Code.PROXY_UNREACHABLE) from None
            received = len(payload)
            headers = _sandboxed(_response_headers(upstream), request.app, service_id)
            headers.popall("Content-Length", None)
            return web.Response(status=upstream.status, reason=upstream.reason, headers=headers, body=payload)
        response = web.StreamResponse(
            status=upstream.status,
            reason=upstream.reason,
            headers=_sandboxed(_response_headers(upstream), request.app, service_id),
        )
        await response.prepare(request)
        received = await _pump(request, response, upstream, service_id)
        if request.transport is not None and not request.transport.is_closing():
            await response.write_eof()
        return response  # otherwise one side went away: aiohttp ends the exchange without more noise
    finally:
        upstream.release()  # a body not read to the end closes the connection instead of pooling it
        _account(metrics, service_id, sent[0], received, start)


async def _pump(
    request: web.Request, response: web.StreamResponse, upstream: aiohttp.ClientResponse, service_id: str
) -> int:
    """Copy the service's body to the client chunk by chunk; returns the bytes copied."""
    copied = 0
    while True:
        try:
            chunk = await upstream.content.readany()
        except aiohttp.ClientError as exc:
            # The service broke mid-body: end the client's connection too, so it sees a truncated answer.
            logger.info("proxy %s: service closed mid-response: %r", service_id, exc)
            if request.transport is not None:
                request.transport.close()
            return copied
        if not chunk:
            return copied
        try:
            await response.write(chunk)
        except ConnectionResetError:  # the client went away: stop reading the service (its connection closes)
            return copied
        copied += len(chunk)


def _account(metrics: Metrics, service_id: str, sent: int, received: int, start: float) -> None:
    metrics.proxy_bytes.inc((service_id, "in"), sent)
    metrics.proxy_bytes.inc((service_id, "out"), received)
    metrics.proxy_duration.observe((service_id,), time.perf_counter() - start)


async def _bridge_websocket(
    request: web.Request, service_id: str, target: str, path_qs: str, prefix: str
) -> web.StreamResponse:
    """Open the service's WebSocket first (so a refusal is still an HTTP error), then relay frames."""
    metrics = request.app[METRICS]
    protocols = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
    url = URL(f"http://{target}{path_qs}", encoded=True)
    start = time.perf_counter()
    try:
        upstream = await request.app[CLIENT].ws_connect(
            url, headers=forward_headers(request, prefix, websocket=True), protocols=protocols, autoping=True
        )
    except aiohttp.WSServerHandshakeError as exc:
        metrics.proxy_requests.inc((service_id, str(exc.status)))
        raise ApiError(f"service {service_id!r} refused the WebSocket", 502, Code.PROXY_UNREACHABLE) from None
    except aiohttp.ClientError:
        metrics.proxy_requests.inc((service_id, "502"))
        raise ApiError(f"service {service_id!r} did not answer", 502, Code.PROXY_UNREACHABLE) from None
    metrics.proxy_requests.inc((service_id, "101"))
    tally = [0, 0]
    try:
        client = web.WebSocketResponse(protocols=(upstream.protocol,) if upstream.protocol else (), autoping=True)
        await client.prepare(request)
        async with asyncio.TaskGroup() as group:
            to_service = group.create_task(_relay(client, upstream, tally, 0))
            to_client = group.create_task(_relay(upstream, client, tally, 1))
            done, _ = await asyncio.wait((to_service, to_client), return_when=asyncio.FIRST_COMPLETED)
            for task in (to_service, to_client):
                if task not in done:
                    task.cancel()
        await client.close()
        return client
    finally:
        await upstream.close()
        _account(metrics, service_id, tally[0], tally[1], start)


async def _relay(
    source: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    sink: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    tally: list[int],
    slot: int,
) -> None:
    with contextlib.suppress(ConnectionError):
        async for msg in source:
            if msg.type is aiohttp.WSMsgType.TEXT:
                tally[slot] += len(msg.data)
                await sink.send_str(msg.data)
            elif msg.type is aiohttp.WSMsgType.BINARY:
                tally[slot] += len(msg.data)
                await sink.send_bytes(msg.data)
            else:  # CLOSE / ERROR end the iteration; PING / PONG are answered by autoping
                break
        await sink.close()


routes = web.RouteTableDef()


@routes.route("*", "/proxy/{service_id}")
@routes.route("*", "/proxy/{service_id}/{path:.*}")
@documented(
    "Forward any request to a running service (streams both ways; WebSocket upgrades too)",
    tags=("proxy",),
    content_type="*/*",
    errors={404: "unknown service", 409: "service not running", 502: "service did not answer", 503: "service starting"},
)
async def proxy(request: web.Request) -> web.StreamResponse:
    service_id = request.match_info["service_id"]
    try:
        target = resolve(request.app, service_id)
        return await forward(request, service_id, target, _upstream_path(request), f"/proxy/{service_id}")
    except ApiError as exc:
        return as_premd(exc)
