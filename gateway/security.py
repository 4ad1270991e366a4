"""Who may drive premd: the bearer token, the foreign-site refusal, and the DNS-rebinding guard.

Rules, in order (a refused request never reaches a handler):

1. **Host** (only when premd listens on loopback without a token): the ``Host`` header must name this
   machine (``localhost``, ``*.localhost``, a loopback IP). A page on a rebound DNS name would otherwise be
   "same-origin" with premd and pass the next rule.
2. **Foreign site** (requests that change state: every method but GET/HEAD/OPTIONS, WebSocket upgrades, and
   premd's GET action routes such as ``stop-service`` and ``system-prune``): refused when the browser says
   the request comes from elsewhere, i.e. an ``Origin`` that is not allowed, or no ``Origin`` and
   ``Sec-Fetch-Site: cross-site`` (an ``<img src>`` or a link to ``/v1/system-prune/``). An allowed
   ``Origin`` passes even when cross-site (the Tauri desktop app is ``tauri://localhost``). Clients without
   ``Origin`` (curl, SDKs) pass. The proxy and the OpenAI routes count too: a web page must not POST to a
   model any more than stop one. Pages premd itself serves or starts are refused too (``own_page``):
   premd's own origin, a loopback origin on a service's published port, and ``Sec-Fetch-Site: same-origin``
   or ``same-site`` without an ``Origin``.
3. **Token** (when ``PREMD_API_TOKEN`` is set): ``Authorization: Bearer <token>`` on every route but the
   health check (``GET /v1/``, ``GET /v1``), compared in constant time. Browsers cannot add a header to an
   ``EventSource`` or a ``WebSocket``, so those two (a GET with ``Accept: text/event-stream``, or an upgrade)
   may carry it as ``?access_token=`` instead.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable, Container
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Handler

from common.errors import Code
from common.settings import Settings
from gateway.cors import OriginPolicy
from gateway.errors import ApiError, as_premd
from gateway.routes.metrics import METRICS

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
STATE_CHANGING_GET_PREFIXES = (
    "/v1/download-service",  # also -stream and -stream-sse: they start a pull
    "/v1/run-service",
    "/v1/stop-service/",
    "/v1/restart-service/",
    "/v1/stop-all-services",
    "/v1/remove-service/",
    "/v1/remove-volume/",
    "/v1/system-prune",
)
HEALTH_PATHS = frozenset({"/v1/", "/v1"})
TOKEN_QUERY = "access_token"


def is_state_changing(method: str, path: str, upgrade: str) -> bool:
    if method not in SAFE_METHODS or upgrade.lower() == "websocket":
        return True
    return method != "OPTIONS" and path.startswith(STATE_CHANGING_GET_PREFIXES)


def foreign_site(origin: str | None, fetch_site: str | None, policy: OriginPolicy) -> str | None:
    """The refusal code when the browser says the request comes from a site not allowed; None when fine."""
    if origin is not None:
        return None if policy.allows(origin) else Code.FOREIGN_ORIGIN
    if fetch_site == "cross-site":
        return Code.CROSS_SITE
    return None


def own_page(
    origin: str | None, fetch_site: str | None, host: str, own_port: int, service_ports: Callable[[], Container[int]]
) -> bool:
    """True when the browser says the request comes from a page premd serves or started: premd's own origin (a
    service page under /proxy/ whose manifest opted out of the sandbox), or a loopback origin on a port premd
    published for a service. Allowed origins (``http://localhost:*``) cover those ports, so this is checked too.
    """
    if origin is None:  # no Origin: an <img>, a link, a form GET; the browser still says where from
        return fetch_site in ("same-origin", "same-site")
    lowered = origin.strip().lower()
    if host and lowered in (f"http://{host.lower()}", f"https://{host.lower()}"):
        return True
    try:
        parts = urlsplit(lowered)
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except ValueError:
        return False
    if port is None or not is_loopback_host(parts.netloc):
        return False
    return port == own_port or port in service_ports()  # computed only for a loopback origin


def is_loopback_host(host: str) -> bool:
    """True for a ``Host`` header naming this machine: localhost, *.localhost or a loopback IP (any port)."""
    name = host.strip().lower()
    if name.startswith("["):
        name = name[1 : name.find("]")] if "]" in name else name
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    name = name.rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def token_matches(given: str, token: bytes) -> bool:
    """Constant-time comparison; any text, even undecodable header bytes (surrogates), is merely wrong."""
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), token)


def bearer_matches(authorization: str | None, token: bytes) -> bool:
    if not authorization:
        return False
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return token_matches(credentials.strip(), token)


@dataclass(frozen=True, slots=True)
class Guard:
    """The rules above, built once from the settings."""

    policy: OriginPolicy
    token: bytes | None
    check_host: bool
    own_port: int = 0
    service_ports: Callable[[], Container[int]] = frozenset
    """The ports premd published for services now (read per request: they change as services start)."""

    @classmethod
    def from_settings(
        cls, settings: Settings, policy: OriginPolicy, service_ports: Callable[[], Container[int]] = frozenset
    ) -> Guard:
        token = settings.api_token.encode() if settings.api_token else None
        check_host = token is None and not settings.is_exposed()
        return cls(policy, token, check_host, settings.port, service_ports)

    def refusal(self, request: web.Request) -> ApiError | None:
        headers = request.headers
        if self.check_host and not is_loopback_host(headers.get("Host", "localhost")):
            return ApiError("premd answers only to localhost names without an API token", 403, Code.HOST_NOT_ALLOWED)
        if is_state_changing(request.method, request.path, headers.get("Upgrade", "")):
            origin, fetch_site = headers.get("Origin"), headers.get("Sec-Fetch-Site")
            code = foreign_site(origin, fetch_site, self.policy)
            if code is not None:
                return ApiError("requests that change state are refused from other sites", 403, code)
            if own_page(origin, fetch_site, headers.get("Host", ""), self.own_port, self.service_ports):
                return ApiError(
                    "requests that change state are refused from pages premd serves or starts (a service's page)",
                    403,
                    Code.SERVICE_ORIGIN,
                )
        if self.token is not None and not self._authenticated(request):
            code = Code.AUTH_INVALID if "Authorization" in headers else Code.AUTH_REQUIRED
            return ApiError(
                "a valid 'Authorization: Bearer <token>' header is required", 401, code, {"WWW-Authenticate": "Bearer"}
            )
        return None

    def _authenticated(self, request: web.Request) -> bool:
        assert self.token is not None
        if request.method in ("GET", "HEAD") and request.path in HEALTH_PATHS:
            return True
        headers = request.headers
        if bearer_matches(headers.get("Authorization"), self.token):
            return True
        if request.method == "GET" and (
            "text/event-stream" in headers.get("Accept", "") or headers.get("Upgrade", "").lower() == "websocket"
        ):
            given = request.query.get(TOKEN_QUERY)
            return given is not None and token_matches(given, self.token)
        return False


GUARD = web.AppKey("security_guard", Guard)


@web.middleware
async def security_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    refused = request.app[GUARD].refusal(request)
    if refused is not None:
        request.app[METRICS].refused.inc((refused.code or "",))
        return as_premd(refused)
    return await handler(request)
