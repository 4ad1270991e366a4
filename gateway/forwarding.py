"""The byte-stream path for ``/proxy/`` and the OpenAI routes: the gateway's listening socket, before aiohttp.

aiohttp's request and response objects cost about half a millisecond per proxied request (bench/ measures
it), more than the services' own answers. So every connection first meets :class:`FrontConnection`: it
reads the request head itself, and when it is a plain ``/proxy/<id>/...`` request that premd lets through
to a ready service (the same checks as the aiohttp route: :class:`gateway.security.Guard` and
:func:`gateway.routes.proxy.resolve`), or an OpenAI request whose ``model`` (read by :func:`openai.model_of`
from the buffered body) names a ready service, it writes the head to a pooled connection to the service and passes the
body bytes through as they come, both ways, without re-framing them (Content-Length and chunked bodies are
only delimited, never decoded). Everything else is *handed over*: the connection, with the bytes read so
far, goes to aiohttp's own protocol and stays there, so premd's API, preflights, refusals, error answers,
WebSocket upgrades and anything unusual (HTTP/1.0, ``Expect``, a malformed head) behave exactly as without
this path. When the service cannot be reached before an answer has begun, the request is handed over too:
aiohttp's route then tries again and answers 502 in premd's shape.

What the client gets from the service is the aiohttp route's answer byte for byte where it matters: status,
the service's headers minus hop-by-hop ones and its CORS headers, premd's CORS headers, the body as sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import unquote_plus

import httptools
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy

from gateway import cors
from gateway.errors import ApiError
from gateway.idle import IDLE, KEEP_ALIVE_HEADER, being_stopped
from gateway.keys import SETTINGS
from gateway.loading import loaded
from gateway.routes import openai, proxy
from gateway.routes.metrics import METRICS
from gateway.security import GUARD, TOKEN_QUERY

if TYPE_CHECKING:
    from aiohttp.web_protocol import RequestHandler

logger = logging.getLogger(__name__)

MAX_HEAD = 64 * 1024
"""A request or response head larger than this is not ours to judge: aiohttp answers it (431)."""
RETAIN = 1024 * 1024
"""Request bytes kept until the service's first answer byte, so a dead pooled connection can be retried."""
HIGH_WATER = 256 * 1024
"""Bytes buffered towards one side before the other side stops being read (back-pressure)."""
CLIENT_IDLE_S = 75.0
"""An idle client connection is closed after this long (aiohttp's keep-alive timeout)."""
UPSTREAM_IDLE_S = 30.0
"""An idle pooled connection to a service is closed after this long."""
STARTED, AIOHTTP, WAIT = "started", "aiohttp", "wait"
"""What the front does with a request head: forwarded, handed to aiohttp, or not yet known (body to come)."""
PROXY_ROUTE = "/proxy/{service_id}/{path}"
PROXY_ROOT_ROUTE = "/proxy/{service_id}"

_DROP_REQUEST = proxy.HOP_BY_HOP - {"transfer-encoding"}
_DROP_RESPONSE = proxy.HOP_BY_HOP - {"transfer-encoding", "host", "expect"}


# ---------------------------------------------------------------- framing


class BodyFraming:
    """Where a body ends in the byte stream: a length, ``chunked`` (scanned, not decoded), or the close."""

    def __init__(self, length: int | None, chunked: bool) -> None:
        self.remaining = length or 0
        self.chunked = chunked
        self.until_close = length is None and not chunked
        self.done = not chunked and not self.until_close and self.remaining == 0
        self._line = bytearray()  # a chunk-size or trailer line not yet complete
        self._state = "size"  # chunked: size, data, data-crlf, trailer

    def feed(self, data: bytes | bytearray | memoryview) -> int:
        """How many leading bytes of ``data`` belong to the body (the rest is the next message)."""
        if self.done:
            return 0
        if self.until_close:
            return len(data)
        if not self.chunked:
            taken = min(self.remaining, len(data))
            self.remaining -= taken
            self.done = self.remaining == 0
            return taken
        return self._scan_chunks(memoryview(data))

    def _scan_chunks(self, data: memoryview) -> int:
        pos, end = 0, len(data)
        while pos < end and not self.done:
            if self._state == "data":
                taken = min(self.remaining, end - pos)
                pos += taken
                self.remaining -= taken
                if self.remaining == 0:
                    self._state = "data-crlf"
                    self._line.clear()
                continue
            newline = bytes(data[pos:end]).find(b"\n")
            if newline == -1:
                self._line += data[pos:end]
                if len(self._line) > MAX_HEAD:
                    raise ValueError("chunk line too long")
                return end
            self._line += data[pos : pos + newline]
            pos += newline + 1
            line = bytes(self._line).rstrip(b"\r")
            self._line.clear()
            if self._state == "data-crlf":
                if line:
                    raise ValueError("chunk data not followed by CRLF")
                self._state = "size"
            elif self._state == "size":
                self.remaining = int(line.split(b";", 1)[0].strip(), 16)
                self._state = "data" if self.remaining else "trailer"
            elif not line:  # the empty line after the trailers ends the body
                self.done = True
        return pos


def _framing(headers: list[tuple[bytes, bytes]], *, no_body: bool) -> BodyFraming | None:
    """The framing of a message with these headers; None when it is ambiguous (not ours to forward)."""
    if no_body:
        return BodyFraming(0, chunked=False)
    length: int | None = None
    chunked = False
    for name, value in headers:
        if name == b"content-length":
            if not value.strip().isdigit() or (length is not None and int(value) != length):
                return None
            length = int(value)
        elif name == b"transfer-encoding":
            if value.strip().lower() != b"chunked" or chunked:
                return None
            chunked = True
    if chunked and length is not None:
        return None
    return BodyFraming(length, chunked)


class _Head:
    """A parsed message head (httptools callbacks fill it)."""

    def __init__(self) -> None:
        self.url = b""
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []  # names lowercased
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.complete = True


def _parse(parser_type: Any, raw: bytes) -> tuple[_Head, Any]:
    """The head in ``raw`` and its httptools parser (None when malformed)."""
    head = _Head()
    parser = parser_type(head)
    try:
        parser.feed_data(raw)
    except httptools.HttpParserUpgrade:
        pass  # the head is complete; an upgrade is judged by the caller
    except httptools.HttpParserError:
        return head, None
    return head, parser


# ---------------------------------------------------------------- what the guard and the metrics read


class RequestHead:
    """The parts of a request that :class:`gateway.security.Guard` reads, from the raw head."""

    def __init__(self, method: str, target: str, headers: list[tuple[bytes, bytes]]) -> None:
        self.method = method
        self.path, _, self.query_string = target.partition("?")
        self.headers: CIMultiDictProxy[str] = CIMultiDictProxy(
            CIMultiDict((n.decode("latin-1"), v.decode("utf-8", "surrogateescape")) for n, v in headers)
        )

    @property
    def query(self) -> MultiDictProxy[str]:
        pairs = (p.partition("=") for p in self.query_string.split("&") if p)
        return MultiDictProxy(MultiDict((unquote_plus(k), unquote_plus(v)) for k, _, v in pairs))


# ---------------------------------------------------------------- the pool of connections to services


class Upstream(asyncio.Protocol):
    """One keep-alive connection to a service; :class:`Exchange` is its reader while it answers."""

    def __init__(self, pool: Pool, target: str) -> None:
        self.pool, self.target = pool, target
        self.transport: asyncio.Transport | None = None
        self.reader: Exchange | None = None
        self.reused = False
        self._idle_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.reader is not None:
            self.reader.upstream_data(data)
        elif self.transport is not None:  # bytes nobody asked for: the connection cannot be trusted
            self.transport.close()

    def eof_received(self) -> bool | None:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool.forget(self)
        self.transport = None
        if self.reader is not None:
            self.reader.upstream_lost()

    def pause_writing(self) -> None:
        if self.reader is not None:
            self.reader.pause_client()

    def resume_writing(self) -> None:
        if self.reader is not None:
            self.reader.resume_client()

    def park(self) -> None:
        self.reader = None
        self.reused = True
        self._idle_timer = asyncio.get_running_loop().call_later(UPSTREAM_IDLE_S, self.close)

    def unpark(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class Pool:
    """Idle connections per ``host:port``, most recently used first."""

    def __init__(self, connect_timeout_s: float) -> None:
        self.connect_timeout_s = connect_timeout_s
        self._idle: dict[str, list[Upstream]] = {}

    async def acquire(self, target: str) -> Upstream:
        idle = self._idle.get(target)
        while idle:
            conn = idle.pop()
            if conn.transport is not None and not conn.transport.is_closing():
                conn.unpark()
                return conn
        host, _, port = target.rpartition(":")
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.connect_timeout_s):
            _, conn = await loop.create_connection(lambda: Upstream(self, target), host, int(port))
        return conn

    def release(self, conn: Upstream) -> None:
        conn.park()
        self._idle.setdefault(conn.target, []).append(conn)

    def forget(self, conn: Upstream) -> None:
        idle = self._idle.get(conn.target)
        if idle and conn in idle:
            idle.remove(conn)

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.unpark()
                conn.close()
        self._idle.clear()


# ---------------------------------------------------------------- one proxied request


class Exchange:
    """One request from a client connection to a service and its answer back."""

    def __init__(
        self,
        front: FrontConnection,
        service_id: str,
        target: str,
        client_head: bytes,
        head: bytes,
        framing: BodyFraming,
        method: str,
        origin: str | None,
        route: str,
    ) -> None:
        self.front, self.service_id, self.target = front, service_id, target
        self.framing, self.method, self.origin, self.route = framing, method, origin, route
        self.metrics = front.app[METRICS]
        self.idle = front.app[IDLE]
        self.idle.begin(service_id)  # a request through /proxy/ is activity (the idle stop waits for its end)
        self.booked = False
        self.upstream: Upstream | None = None
        self.client_head = client_head
        self.retained: list[bytes] | None = []  # the request's body so far, until the first answer byte
        self.retained_size = len(client_head)
        self.pending: list[bytes] = [head]  # to write once connected
        self.started = time.perf_counter()
        self.sent = 0
        self.received = 0
        self.status = 0
        self.answer_head: bytearray | None = bytearray()  # the service's head until it is complete
        self.answer: BodyFraming | None = None
        self.rechunk = False
        self.keep_upstream = True
        self.finished = False

    # client -> service
    def client_body(self, data: bytes) -> None:
        self.sent += len(data)
        if self.retained is not None:
            if self.retained_size + len(data) > RETAIN:
                self.retained = None
            else:
                self.retained.append(data)
                self.retained_size += len(data)
        if self.upstream is None or self.upstream.transport is None:
            self.pending.append(data)
        else:
            self.upstream.transport.write(data)

    async def connect(self) -> None:
        try:
            conn = await self.front.pool.acquire(self.target)
        except (OSError, TimeoutError) as exc:
            logger.debug("proxy %s: connecting to %s failed: %r", self.service_id, self.target, exc)
            self.front.hand_over_exchange(self)
            return
        if self.finished or self.front.exchange is not self:  # the client went away meanwhile
            conn.close()
            return
        self.upstream = conn
        conn.reader = self
        assert conn.transport is not None
        conn.transport.writelines(self.pending)
        self.pending = []
        if self.front.writing_paused:  # the client still has not read an earlier answer: hold this one back too
            conn.transport.pause_reading()

    # service -> client
    def upstream_data(self, data: bytes) -> None:
        if self.retained is not None:
            self.retained = None
            self.metrics.proxy_upstream_latency.observe((self.service_id,), time.perf_counter() - self.started)
        if self.answer_head is not None:
            self.answer_head += data
            end = self.answer_head.find(b"\r\n\r\n")
            if end == -1:
                if len(self.answer_head) > MAX_HEAD:
                    self.fail("answer head too large")
                return
            raw, rest = bytes(self.answer_head[: end + 4]), bytes(self.answer_head[end + 4 :])
            if not self._answer_head(raw):
                return
            data = rest
        if not data or self.answer is None:
            return
        try:
            taken = self.answer.feed(data)
        except ValueError as exc:
            self.fail(str(exc))
            return
        if taken:
            self._to_client(data[:taken] if taken < len(data) else data)
        if taken < len(data) and self.upstream is not None:  # more than the answer: do not reuse this connection
            self.keep_upstream = False
        if self.answer.done:
            self._answered()

    def _answer_head(self, raw: bytes) -> bool:
        head, parser = _parse(httptools.HttpResponseParser, raw)
        if parser is None or not head.complete:
            self.fail("malformed answer head")
            return False
        status = parser.get_status_code()
        if 100 <= status < 200:  # an interim answer (103 Early Hints): wait for the final one
            self.answer_head = bytearray()
            return True
        self.answer_head = None
        self.status = status
        framing = _framing(head.headers, no_body=self.method == "HEAD" or status in (204, 304))
        if framing is None:
            self.fail("ambiguous answer framing")
            return False
        self.answer = framing
        if framing.until_close or not parser.should_keep_alive():
            self.keep_upstream = False
        self.rechunk = framing.until_close
        self.front.write(self._client_head(status, head))
        self.metrics.proxy_requests.inc((self.service_id, str(status)))
        if framing.done:
            self._answered()
        return True

    def _client_head(self, status: int, head: _Head) -> bytes:
        drop = _DROP_RESPONSE
        for name, value in head.headers:
            if name == b"connection":
                drop = drop | {t.strip().lower().decode("latin-1") for t in value.split(b",")}
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, head.reason)]
        vary: bytes | None = None
        for name, value in head.headers:
            text = name.decode("latin-1")
            if text in drop or text.startswith("access-control-"):
                continue
            if name == b"vary":
                vary = value if vary is None else vary + b", " + value
                continue
            lines.append(name + b": " + value + b"\r\n")
        lines.extend(cors_lines(self.front.policy, self.origin, vary))
        if csp := proxy.sandbox_csp(self.front.app, self.service_id):  # issue 10: an opaque origin for its pages
            lines.append(b"content-security-policy: " + csp.encode() + b"\r\n")
        if self.rechunk:
            lines.append(b"transfer-encoding: chunked\r\n")
        if not self.front.keep_alive:
            lines.append(b"connection: close\r\n")
        lines.append(b"\r\n")
        return b"".join(lines)

    def _to_client(self, data: bytes) -> None:
        self.received += len(data)
        if self.rechunk:
            self.front.write(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            self.front.write(data)

    def _answered(self) -> None:
        """The whole answer is with the client; the client's body may still be arriving (rare)."""
        if self.rechunk:
            self.front.write(b"0\r\n\r\n")
            self.rechunk = False
        self.finished = True
        self._settle()

    def _settle(self) -> None:
        if not self.finished or not self.framing.done:
            return
        conn, self.upstream = self.upstream, None
        if conn is not None:
            if self.keep_upstream and conn.transport is not None and not conn.transport.is_closing():
                self.front.pool.release(conn)
            else:
                conn.reader = None
                conn.close()
        self._account()
        self.front.exchange_done(self)

    def body_complete(self) -> bool:
        return self.framing.done

    def client_body_done(self) -> None:
        self._settle()

    def upstream_lost(self) -> None:
        self.upstream = None
        if self.answer is not None and self.answer.until_close:  # the end of a close-delimited answer
            self.answer.done = True
            self._answered()
            return
        if self.finished:
            return
        if self.answer_head is not None and self.answer_head == b"" and self.retained is not None and self.status == 0:
            # Nothing answered yet and the whole request is still here: aiohttp's route tries again.
            self.front.hand_over_exchange(self)
            return
        self.fail("the service closed the connection mid-answer")

    def fail(self, why: str) -> None:
        """The service broke off: end the client's connection too, so it sees a truncated answer."""
        logger.info("proxy %s: %s", self.service_id, why)
        if self.status == 0:
            self.metrics.proxy_requests.inc((self.service_id, "502"))
            self.status = 502
        self.finished = True
        if self.upstream is not None:
            self.upstream.reader = None
            self.upstream.close()
            self.upstream = None
        self._account()
        self.front.close()

    def abandon(self) -> None:
        """The client went away."""
        if self.finished:
            return
        self.finished = True
        if self.upstream is not None:
            self.upstream.reader = None
            self.upstream.close()
            self.upstream = None
        if self.status == 0:
            self.status = 499
        self._account()

    def pause_client(self) -> None:
        self.front.pause_reading_for("upstream")

    def resume_client(self) -> None:
        self.front.resume_reading_for("upstream")

    def pause_upstream(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.pause_reading()

    def resume_upstream(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.resume_reading()

    def end_activity(self) -> None:
        if not self.booked:
            self.booked = True
            self.idle.end(self.service_id)

    def _account(self) -> None:
        self.end_activity()
        metrics = self.metrics
        metrics.proxy_bytes.inc((self.service_id, "in"), self.sent)
        metrics.proxy_bytes.inc((self.service_id, "out"), self.received)
        elapsed = time.perf_counter() - self.started
        metrics.proxy_duration.observe((self.service_id,), elapsed)
        metrics.observe_http(self.route, self.method, self.status, elapsed)


def cors_lines(policy: cors.OriginPolicy, origin: str | None, vary: bytes | None) -> list[bytes]:
    """premd's CORS headers for an answer to ``origin`` (what :func:`gateway.cors.on_response_prepare` sets)."""
    if vary is None:
        lines = [b"vary: Origin\r\n"]
    elif b"origin" not in vary.lower():
        lines = [b"vary: " + vary + b", Origin\r\n"]
    else:
        lines = [b"vary: " + vary + b"\r\n"]
    if origin is None or not policy.allows(origin):
        return lines
    if policy.any:
        lines.append(b"access-control-allow-origin: *\r\n")
    else:
        lines.append(b"access-control-allow-origin: " + origin.encode("utf-8", "surrogateescape") + b"\r\n")
        lines.append(b"access-control-allow-credentials: true\r\n")
    lines.append(b"access-control-expose-headers: " + cors.EXPOSE_HEADERS.encode() + b"\r\n")
    return lines


# ---------------------------------------------------------------- the client's connection


class FrontConnection(asyncio.Protocol):
    """A client's connection: proxied requests are forwarded here; the first other request hands it over."""

    def __init__(self, front: Front) -> None:
        self.front = front
        self.app = front.app
        self.pool = front.pool
        self.policy = front.app[cors.POLICY]
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.exchange: Exchange | None = None
        self.keep_alive = True
        self._paused: set[str] = set()
        self.writing_paused = False
        self._idle_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.front.connections.add(self)
        self._arm_idle()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._advance()

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.front.connections.discard(self)
        self._disarm_idle()
        if self.exchange is not None:
            self.exchange.abandon()
            self.exchange = None
        self.transport = None

    def pause_writing(self) -> None:
        self.writing_paused = True
        if self.exchange is not None:
            self.exchange.pause_upstream()

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.exchange is not None:
            self.exchange.resume_upstream()

    # -------------------------------------------------------- reading requests

    def _advance(self) -> None:
        """Feed what was read to the current request's body, or start the next request."""
        while self.transport is not None and self.buffer:
            exchange = self.exchange
            if exchange is not None:
                if exchange.framing.done:  # a pipelined request: wait for the answer in flight
                    if len(self.buffer) > HIGH_WATER:
                        self.pause_reading_for("pipelined")
                    return
                taken = exchange.framing.feed(self.buffer)
                if taken:
                    chunk = bytes(self.buffer[:taken])
                    del self.buffer[:taken]
                    exchange.client_body(chunk)
                if exchange.body_complete():
                    exchange.client_body_done()
                continue
            end = self.buffer.find(b"\r\n\r\n")
            if end == -1:
                if len(self.buffer) > MAX_HEAD:
                    self.hand_over()
                return
            self._disarm_idle()
            verdict = self._start(bytes(self.buffer[: end + 4]), end + 4)
            if verdict == WAIT:
                return
            if verdict == AIOHTTP:
                self.hand_over()
                return
            del self.buffer[: end + 4]

    def _start(self, raw: bytes, body_at: int) -> str:
        """Begin forwarding the request with this head: STARTED, AIOHTTP (its to answer) or WAIT (for the body)."""
        space = raw.find(b" ") + 1
        openai_route = raw.startswith(b"POST /v1/")
        if not openai_route and not raw.startswith(b"/proxy/", space):
            return AIOHTTP
        head, parser = _parse(httptools.HttpRequestParser, raw)
        if parser is None or not head.complete or parser.get_http_version() != "1.1":
            return AIOHTTP
        method = parser.get_method().decode("latin-1")
        names = {name for name, _ in head.headers}
        if method == "OPTIONS" or names & {b"upgrade", b"expect"}:
            return AIOHTTP
        framing = _framing(head.headers, no_body=False)
        if framing is None:
            return AIOHTTP
        if framing.until_close:  # a request without a length has no body
            framing = BodyFraming(0, chunked=False)
        target = head.url.decode("utf-8", "surrogateescape")
        path, _, query = target.partition("?")
        request = RequestHead(method, target, head.headers)
        if openai_route:
            found = self._openai_target(request, framing, body_at)
            if isinstance(found, str):
                return found
            service_id, prefix, upstream_path, route = found
        else:
            parts = path.split("/", 3)
            service_id = parts[2]
            if not service_id or "%" in service_id:
                return AIOHTTP
            prefix, upstream_path = f"/proxy/{service_id}", "/" + parts[3] if len(parts) > 3 else "/"
            route = PROXY_ROUTE if len(parts) > 3 else PROXY_ROOT_ROUTE
        if self.front.guard.refusal(cast(web.Request, request)) is not None:
            return AIOHTTP
        if not loaded(self.app):
            return AIOHTTP  # still loading (gateway/loading.py): the aiohttp route waits for it
        if being_stopped(self.app, service_id):
            return AIOHTTP  # stopping for idleness: the aiohttp route waits for the stop, then autostarts
        try:
            address = proxy.resolve(self.app, service_id)
        except ApiError:
            return AIOHTTP  # not ready, unknown, autostart: the aiohttp route says so, or waits
        self.keep_alive = parser.should_keep_alive()
        upstream_head = self._upstream_head(method, upstream_path, query, head.headers, address, prefix)
        origin = request.headers.get("Origin")
        exchange = Exchange(self, service_id, address, raw, upstream_head, framing, method, origin, route)
        self.exchange = exchange
        self.front.spawn(exchange.connect())
        if framing.done:
            exchange.client_body_done()
        return STARTED

    def _openai_target(
        self, request: RequestHead, framing: BodyFraming, body_at: int
    ) -> str | tuple[str, str, str, str]:
        """For an OpenAI route: (service id, prefix, path, route) from the body's ``model``, or a verdict.

        What the model is and whether the request may go is openai.py's (the aiohttp route answers every
        other case: bad JSON, unknown model, autostart, the keep-alive header).
        """
        if request.path not in openai.FORWARDED_PATHS or request.path == openai.MULTIPART_PATH:
            return AIOHTTP
        if framing.chunked or KEEP_ALIVE_HEADER in request.headers:
            return AIOHTTP
        length = framing.remaining
        if length > self.app[SETTINGS].openai_max_body_bytes:
            return AIOHTTP
        if len(self.buffer) - body_at < length:
            return WAIT if len(self.buffer) <= RETAIN else AIOHTTP
        body = bytes(self.buffer[body_at : body_at + length])
        try:
            model = openai.model_of(cast(web.Request, request), body)
        except ApiError:
            return AIOHTTP
        return model, "", request.path, request.path

    def _upstream_head(
        self,
        method: str,
        upstream_path: str,
        query: str,
        headers: list[tuple[bytes, bytes]],
        address: str,
        prefix: str,
    ) -> bytes:
        """The head the service gets (what gateway.routes.proxy.forward_headers sends)."""
        settings = self.app[SETTINGS]
        if query and settings.api_token:
            query = "&".join(p for p in query.split("&") if unquote_plus(p.partition("=")[0]) != TOKEN_QUERY)
        if query:
            upstream_path += "?" + query
        drop = _DROP_REQUEST
        for name, value in headers:
            if name == b"connection":
                drop = drop | {t.strip().lower().decode("latin-1") for t in value.split(b",")}
        strip_auth = settings.api_token is not None
        lines = [f"{method} {upstream_path} HTTP/1.1\r\nHost: {address}\r\n".encode("utf-8", "surrogateescape")]
        forwarded_for = b""
        host = b""
        for name, value in headers:
            text = name.decode("latin-1")
            if name == b"host":
                host = value
            if text in drop or (strip_auth and name == b"authorization"):
                continue
            if name == b"x-forwarded-for":
                forwarded_for = value if not forwarded_for else forwarded_for + b", " + value
                continue
            if name in (b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-prefix"):
                continue  # premd sets these
            lines.append(name + b": " + value + b"\r\n")
        peer = self.transport.get_extra_info("peername") if self.transport is not None else None
        peer_ip = (peer[0] if isinstance(peer, tuple) else "").encode()
        lines.append(b"X-Forwarded-For: " + (forwarded_for + b", " + peer_ip if forwarded_for else peer_ip) + b"\r\n")
        lines.append(b"X-Forwarded-Proto: http\r\nX-Forwarded-Host: " + host + b"\r\n")
        if prefix:
            lines.append(f"X-Forwarded-Prefix: {prefix}\r\n".encode("utf-8", "surrogateescape"))
        lines.append(b"\r\n")
        return b"".join(lines)

    # -------------------------------------------------------- writing answers

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def exchange_done(self, exchange: Exchange) -> None:
        if self.exchange is not exchange:
            return
        self.exchange = None
        self.front.quiet.set()
        if not self.keep_alive:
            self.close()
            return
        self.resume_reading_for("pipelined")
        self._arm_idle()
        if self.buffer:
            self.front.loop.call_soon(self._advance)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def pause_reading_for(self, why: str) -> None:
        if not self._paused and self.transport is not None:
            self.transport.pause_reading()
        self._paused.add(why)

    def resume_reading_for(self, why: str) -> None:
        if why in self._paused:
            self._paused.discard(why)
            if not self._paused and self.transport is not None:
                self.transport.resume_reading()

    def _arm_idle(self) -> None:
        self._disarm_idle()
        self._idle_timer = self.front.loop.call_later(CLIENT_IDLE_S, self.close)

    def _disarm_idle(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    # -------------------------------------------------------- handing the connection to aiohttp

    def hand_over_exchange(self, exchange: Exchange) -> None:
        """Give aiohttp the request this exchange was forwarding (nothing of its answer was written yet)."""
        if self.exchange is not exchange or exchange.retained is None:
            self.close()
            return
        exchange.finished = True
        exchange.end_activity()  # aiohttp's route counts the retried request itself
        self.exchange = None
        self.buffer[0:0] = exchange.client_head + b"".join(exchange.retained)
        self.hand_over()

    def hand_over(self) -> None:
        """From now on aiohttp's protocol owns the connection; it gets the bytes read and not yet used."""
        transport = self.transport
        if transport is None:
            return
        self._disarm_idle()
        self.front.connections.discard(self)
        self.transport = None
        handler: RequestHandler = self.front.server()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self._paused:
            transport.resume_reading()
            self._paused.clear()
        if self.buffer:
            data, self.buffer = bytes(self.buffer), bytearray()
            handler.data_received(data)


class Front:
    """The listener: a :class:`FrontConnection` per client, aiohttp's server behind them."""

    def __init__(self, runner: web.AppRunner, app: web.Application) -> None:
        server = runner.server
        assert server is not None, "runner.setup() first"
        self.server: Callable[[], RequestHandler] = server
        self.app = app
        self.guard = app[GUARD]
        self.pool = Pool(app[SETTINGS].request_timeout_s)
        self.connections: set[FrontConnection] = set()
        self.loop = asyncio.get_running_loop()
        self._tasks: set[asyncio.Task[None]] = set()
        self.quiet = asyncio.Event()
        """Set whenever an answer ends (the drain on stop looks again)."""
        self._listener: asyncio.Server | None = None

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def start(self, host: str, port: int) -> int:
        self._listener = await self.loop.create_server(
            lambda: FrontConnection(self), host, port, reuse_address=True, backlog=1024
        )
        return int(self._listener.sockets[0].getsockname()[1])

    async def stop(self, drain_s: float) -> None:
        """Stop accepting; let answers in flight finish for up to ``drain_s``; close the rest."""
        if self._listener is not None:
            self._listener.close()
        deadline = self.loop.time() + drain_s
        for conn in list(self.connections):
            if conn.exchange is None:
                conn.close()
        while any(c.exchange is not None for c in self.connections) and self.loop.time() < deadline:
            self.quiet.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await self.quiet.wait()
        for conn in list(self.connections):
            conn.close()
        self.pool.close()
        for task in list(self._tasks):
            task.cancel()
