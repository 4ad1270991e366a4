"""``GET /metrics``: Prometheus text exposition, hand-rolled (counters and fixed-bucket histograms).

Labels stay bounded: ``route`` is the route's template (``/v1/stop-service/{service_id}``, ``unmatched``
for 404s), never the raw path; ``service`` only takes ids that reached a service through the proxy.
Operations are counted from the events the gateway sees while it runs (core NATS, no replay).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from bisect import bisect_left
from collections import Counter as _Tally
from collections.abc import AsyncIterator, Iterable
from typing import get_args

import msgspec
import nats.errors
from aiohttp import web
from aiohttp.typedefs import Handler
from nats.aio.msg import Msg

from common import bus, codec, subjects
from common.messages import OperationEvent, ServicePhase, ServiceState, ServiceStats
from gateway.apidoc import documented
from gateway.keys import NC, VIEW

logger = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_PHASES: tuple[str, ...] = get_args(ServicePhase)

Labels = tuple[str, ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(names: Labels, values: Labels, extra: str = "") -> str:
    pairs = [f'{name}="{_escape(value)}"' for name, value in zip(names, values, strict=True)]
    if extra:
        pairs.append(extra)
    return "{" + ",".join(pairs) + "}" if pairs else ""


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) else repr(value)


class Counter:
    def __init__(self, name: str, help_: str, labels: Labels) -> None:
        self.name, self.help, self.labels = name, help_, labels
        self.values: dict[Labels, float] = {}

    def inc(self, labels: Labels, amount: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + amount

    def render(self, out: list[str]) -> None:
        out += [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        out += [f"{self.name}{_labels(self.labels, key)} {_number(v)}" for key, v in sorted(self.values.items())]


class Histogram:
    def __init__(self, name: str, help_: str, labels: Labels, buckets: tuple[float, ...] = LATENCY_BUCKETS_S) -> None:
        self.name, self.help, self.labels, self.buckets = name, help_, labels, buckets
        self._series: dict[Labels, list[float]] = {}
        """Per label set: one count per bucket plus +Inf (not cumulative), then the sum."""

    def observe(self, labels: Labels, value: float) -> None:
        series = self._series.get(labels)
        if series is None:
            series = self._series[labels] = [0.0] * (len(self.buckets) + 2)
        series[bisect_left(self.buckets, value)] += 1
        series[-1] += value

    def count(self, labels: Labels) -> int:
        series = self._series.get(labels)
        return int(sum(series[:-1])) if series else 0

    def render(self, out: list[str]) -> None:
        out += [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for key, series in sorted(self._series.items()):
            running = 0.0
            for bound, count in zip((*self.buckets, float("inf")), series, strict=False):
                running += count
                le = "+Inf" if bound == float("inf") else _number(bound)
                labels = _labels(self.labels, key, 'le="' + le + '"')
                out.append(f"{self.name}_bucket{labels} {_number(running)}")
            out.append(f"{self.name}_sum{_labels(self.labels, key)} {series[-1]!r}")
            out.append(f"{self.name}_count{_labels(self.labels, key)} {_number(running)}")


class Metrics:
    """Every metric the gateway exposes."""

    def __init__(self) -> None:
        self.http_requests = Counter(
            "premd_http_requests_total",
            "HTTP requests by route template, method and status.",
            ("route", "method", "status"),
        )
        self.http_duration = Histogram(
            "premd_http_request_duration_seconds",
            "Time to handle an HTTP request (streams: until they end).",
            ("route", "method"),
        )
        self.refused = Counter(
            "premd_http_refused_total", "Requests refused by the security rules, by code.", ("code",)
        )
        self.proxy_requests = Counter(
            "premd_proxy_requests_total", "Requests forwarded to services, by upstream status.", ("service", "status")
        )
        self.proxy_bytes = Counter(
            "premd_proxy_bytes_total",
            "Body bytes through the proxy: in = to the service, out = to the client.",
            ("service", "direction"),
        )
        self.proxy_upstream_latency = Histogram(
            "premd_proxy_upstream_latency_seconds",
            "From forwarding a request to the service's response headers.",
            ("service",),
        )
        self.proxy_duration = Histogram(
            "premd_proxy_duration_seconds", "Whole proxied exchange, streamed body included.", ("service",)
        )
        self.operations = Counter(
            "premd_operations_total",
            "Finished operations (pull, start, stop, ...) by kind and result.",
            ("kind", "result"),
        )

    def observe_http(self, route: str, method: str, status: int, seconds: float) -> None:
        method = method if method in _METHODS else "OTHER"
        self.http_requests.inc((route, method, str(status)))
        self.http_duration.observe((route, method), seconds)

    def render(self, states: Iterable[ServiceState]) -> str:
        out: list[str] = []
        for metric in (
            self.http_requests,
            self.http_duration,
            self.refused,
            self.proxy_requests,
            self.proxy_bytes,
            self.proxy_upstream_latency,
            self.proxy_duration,
            self.operations,
        ):
            metric.render(out)
        phases: _Tally[str] = _Tally(state.phase for state in states)
        out += ["# HELP premd_services Services by observed phase.", "# TYPE premd_services gauge"]
        out += [f'premd_services{{phase="{phase}"}} {phases.get(phase, 0)}' for phase in _PHASES]
        return "\n".join(out) + "\n"


METRICS = web.AppKey("metrics", Metrics)


def route_label(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    start = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except asyncio.CancelledError:
        status = 499  # the client went away (nginx's convention)
        raise
    finally:
        request.app[METRICS].observe_http(route_label(request), request.method, status, time.perf_counter() - start)


routes = web.RouteTableDef()


@routes.get("/metrics")
@documented("Prometheus metrics (text exposition format)", content_type=CONTENT_TYPE, tags=("operations",))
async def metrics(request: web.Request) -> web.Response:
    text = request.app[METRICS].render(request.app[VIEW].observed.values.values())
    text += render_bus_stats(await _bus_stats(request))
    return web.Response(body=text.encode(), headers={"Content-Type": CONTENT_TYPE})


STATS_WINDOW_S = 0.25
"""How long /metrics waits for the components' $SRV.STATS answers (it stops as soon as all have answered)."""


async def _bus_stats(request: web.Request) -> list[ServiceStats]:
    def everyone(answers: list[ServiceStats]) -> bool:
        return {answer.name for answer in answers} >= set(subjects.COMPONENTS)

    return await bus.gather(request.app[NC], subjects.SRV_STATS, ServiceStats, STATS_WINDOW_S, everyone)


def render_bus_stats(stats: Iterable[ServiceStats]) -> str:
    """The components' micro-service counters ($SRV.STATS), one sample per component instance and endpoint."""
    families = (
        ("premd_bus_requests_total", "counter", "Commands answered, by component and endpoint.", "num_requests", 1.0),
        ("premd_bus_errors_total", "counter", "Commands answered with an error.", "num_errors", 1.0),
        ("premd_bus_processing_seconds_total", "counter", "Time spent answering commands.", "processing_time", 1e-9),
    )
    out: list[str] = [
        "# HELP premd_component_info A component instance answering on the bus (value 1).",
        "# TYPE premd_component_info gauge",
    ]
    answers = sorted(stats, key=lambda s: (s.name, s.id))
    for answer in answers:
        labels = _labels(("component", "instance", "version"), (answer.name, answer.id, answer.version))
        out.append(f"premd_component_info{labels} 1")
    for name, kind, help_, attribute, scale in families:
        out += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}"]
        for answer in answers:
            for endpoint in answer.endpoints or []:
                labels = _labels(("component", "instance", "endpoint"), (answer.name, answer.id, endpoint.name))
                out.append(f"{name}{labels} {_number(getattr(endpoint, attribute) * scale)}")
    return "\n".join(out) + "\n"


async def operations_ctx(app: web.Application) -> AsyncIterator[None]:
    """Count finished operations from the service events subject while the gateway runs."""
    tally = app[METRICS].operations

    async def on_event(msg: Msg) -> None:
        if not msg.subject.endswith((".succeeded", ".failed")):
            return
        try:
            event = codec.decode(msg.data, OperationEvent)
        except (msgspec.DecodeError, msgspec.ValidationError):
            logger.debug("undecodable event on %s", msg.subject)
            return
        tally.inc((event.kind, event.type))

    sub = await app[NC].subscribe(subjects.SERVICE_EVENTS_ALL, cb=on_event)
    yield
    with contextlib.suppress(nats.errors.Error):
        await sub.unsubscribe()
