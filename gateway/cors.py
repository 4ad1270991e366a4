"""CORS from an allow-list of origins, on every response (streams and the proxy included) and every preflight.

The allowed origin is echoed (never ``*`` with credentials) with ``Vary: Origin``. Preflights are answered
here, before authentication (browsers never send credentials on them) and before routing, so that any path,
``/proxy/<id>/...`` included, gets one. A service's own CORS headers never reach the browser: the gateway's
policy replaces them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Handler

from common.errors import Code
from gateway.errors import error_response

ALLOW_METHODS = "DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT"
DEFAULT_ALLOW_HEADERS = "Authorization, Content-Type"
EXPOSE_HEADERS = "Content-Disposition, Location, Retry-After, WWW-Authenticate"
MAX_AGE_S = "600"
_CACHE_LIMIT = 1024
_HEADER_LIST = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+(\s*,\s*[A-Za-z0-9!#$%&'*+.^_`|~-]+)*$")


@dataclass(frozen=True, slots=True)
class _Origin:
    scheme: str
    host: str
    port: str
    """The explicit port, "" for none, "*" (patterns only) for any."""


def _parse(text: str) -> _Origin | None:
    scheme, sep, rest = text.strip().lower().partition("://")
    if not sep or not scheme or not rest or "/" in rest:
        return None
    if rest.startswith("["):  # IPv6 literal: [::1]:8080
        host, bracket, tail = rest.partition("]")
        if not bracket or (tail and not tail.startswith(":")):
            return None
        return _Origin(scheme, host + "]", tail[1:])
    host, _, port = rest.partition(":")
    return _Origin(scheme, host, port) if host else None


class OriginPolicy:
    """Which browser origins may read premd's answers and drive it.

    Entries are ``scheme://host`` or ``scheme://host:port``; a port of ``*`` matches any port (and none).
    The single entry ``*`` allows every origin, without credentials.
    """

    def __init__(self, patterns: Iterable[str]) -> None:
        self.any = False
        self._exact: set[str] = set()
        self._wild: list[_Origin] = []
        for pattern in patterns:
            if pattern.strip() == "*":
                self.any = True
                continue
            parsed = _parse(pattern)
            if parsed is None:
                raise ValueError(f"not an origin: {pattern!r}")
            if parsed.port == "*":
                self._wild.append(parsed)
            else:
                self._exact.add(_render(parsed))
        self._cache: dict[str, bool] = {}

    def allows(self, origin: str) -> bool:
        if self.any:
            return True
        found = self._cache.get(origin)
        if found is None:
            found = self._match(origin)
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()  # bounded: a client sending random origins cannot grow it
            self._cache[origin] = found
        return found

    def _match(self, origin: str) -> bool:
        parsed = _parse(origin)
        if parsed is None or parsed.port == "*":
            return False  # "null" (sandboxed frames, file://) and malformed origins are never allowed
        if _render(parsed) in self._exact:
            return True
        return any(w.scheme == parsed.scheme and w.host == parsed.host for w in self._wild)


def _render(origin: _Origin) -> str:
    return f"{origin.scheme}://{origin.host}" + (f":{origin.port}" if origin.port else "")


POLICY = web.AppKey("cors_policy", OriginPolicy)


@web.middleware
async def preflight_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer CORS preflights on every path; everything else goes on."""
    if request.method == "OPTIONS":
        origin = request.headers.get("Origin")
        if origin is not None and "Access-Control-Request-Method" in request.headers:
            return _preflight(request, origin)
    return await handler(request)


def _preflight(request: web.Request, origin: str) -> web.Response:
    policy = request.app[POLICY]
    if not policy.allows(origin):
        return error_response(f"origin {origin!r} is not allowed", 403, Code.CORS_ORIGIN_NOT_ALLOWED)
    requested = request.headers.get("Access-Control-Request-Headers", "").strip()
    headers = {
        "Access-Control-Allow-Methods": ALLOW_METHODS,
        "Access-Control-Allow-Headers": requested if _HEADER_LIST.match(requested) else DEFAULT_ALLOW_HEADERS,
        "Access-Control-Max-Age": MAX_AGE_S,
    }
    if request.headers.get("Access-Control-Request-Private-Network") == "true":
        # Chrome's Private Network Access: an allowed page may reach premd on this machine.
        headers["Access-Control-Allow-Private-Network"] = "true"
    return web.Response(status=204, headers=headers)


async def on_response_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """Set (or clear) the CORS headers of every response just before its headers are sent."""
    headers = response.headers
    vary = headers.get("Vary")
    if vary is None:
        headers["Vary"] = "Origin"
    elif "origin" not in vary.lower():
        headers["Vary"] = vary + ", Origin"
    origin = request.headers.get("Origin")
    if origin is None:
        return
    policy = request.app[POLICY]
    if not policy.allows(origin):
        headers.popall("Access-Control-Allow-Origin", None)
        headers.popall("Access-Control-Allow-Credentials", None)
        return
    if policy.any:
        headers["Access-Control-Allow-Origin"] = "*"
    else:
        headers["Access-Control-Allow-Origin"] = origin
        headers["Access-Control-Allow-Credentials"] = "true"
    headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
