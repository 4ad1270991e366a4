"""The idle clock (who is due for an idle stop, when) and the keep-alive header, on a hand-driven clock."""

from __future__ import annotations

import math

import msgspec
import pytest

from common.manifest import Manifest
from common.messages import CatalogEntry, HostFacts, ServiceState
from gateway.idle import IdleClock, parse_keep_alive
from gateway.openai_models import listed


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("300", 300.0), ("90s", 90.0), ("5m", 300.0), ("1h", 3600.0), ("250ms", 0.25), (" 2.5 S ", 2.5), ("0", 0.0)],
)
def test_keep_alive_durations(text: str, seconds: float) -> None:
    assert parse_keep_alive(text) == seconds


@pytest.mark.parametrize("text", ["-1", "-5m"])
def test_negative_keep_alive_is_never(text: str) -> None:
    assert parse_keep_alive(text) == math.inf


@pytest.mark.parametrize("text", ["", "soon", "5 minutes", "1e3", "--1", "5d", "inf"])
def test_malformed_keep_alive_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="X-Premd-Keep-Alive"):
        parse_keep_alive(text)


def test_due_after_the_keep_alive_counted_from_the_last_request_end() -> None:
    clock = Clock()
    idle = IdleClock(10.0, now=clock)
    assert idle.due(["a"]) == ([], 10.0)  # first seen now: its clock starts
    clock.t += 4
    idle.begin("a")
    clock.t += 100  # a long stream is activity: never due while in flight
    assert idle.due(["a"]) == ([], None)
    idle.end("a")
    clock.t += 9
    due, wait = idle.due(["a"])
    assert due == [] and wait is not None and math.isclose(wait, 1.0)
    clock.t += 1
    assert idle.due(["a"]) == ([("a", 10.0)], None)


def test_overlapping_requests_keep_it_busy_until_the_last_ends() -> None:
    clock = Clock()
    idle = IdleClock(1.0, now=clock)
    idle.begin("a")
    idle.begin("a")
    idle.end("a")
    clock.t += 5
    assert idle.due(["a"]) == ([], None)
    idle.end("a")
    clock.t += 1
    assert idle.due(["a"])[0] == [("a", 1.0)]


def test_per_request_keep_alive_and_forget() -> None:
    clock = Clock()
    idle = IdleClock(300.0, now=clock)
    with idle.active("a", keep_alive_s=0.0):
        pass
    with idle.active("b", keep_alive_s=math.inf):
        pass
    clock.t += 1
    assert idle.due(["a", "b", "c"]) == ([("a", 1.0)], 300.0)  # b never; c, first seen now, has the default
    idle.forget("a")
    assert idle.keep_alive_of("a") == 300.0


def test_negative_setting_never_stops_and_postpone_delays() -> None:
    clock = Clock()
    assert IdleClock(math.nan).default_s == math.inf  # a setting of "nan" must not make the loop spin
    never = IdleClock(-1.0, now=clock)
    never.due(["a"])
    clock.t += 1e6
    assert never.due(["a"]) == ([], None)

    idle = IdleClock(10.0, now=clock)
    idle.due(["a"])
    clock.t += 10
    assert idle.due(["a"])[0]
    idle.postpone("a", 5.0)
    due, wait = idle.due(["a"])
    assert due == [] and wait is not None and math.isclose(wait, 5.0)


def test_services_no_longer_on_demand_are_forgotten() -> None:
    clock = Clock()
    idle = IdleClock(10.0, now=clock)
    with idle.active("a", keep_alive_s=1.0):
        pass
    idle.due([])  # "a" stopped or became a user's
    assert idle.keep_alive_of("a") == 10.0


def _entry(service_id: str, **fields: object) -> CatalogEntry:
    raw = {"id": service_id, "name": service_id, "interfaces": ["chat"], **fields}
    return CatalogEntry(manifest=msgspec.convert(raw, Manifest), origin="test")


FACTS = HostFacts(
    gpus=[],
    memory_total_bytes=8 << 30,
    memory_available_bytes=8 << 30,
    disk_free_bytes=100 << 30,
    disk_total_bytes=200 << 30,
    docker_available=True,
    updated_at=0.0,
)


def test_models_listed_with_and_without_autostart() -> None:
    cpu = {"dockerImages": {"cpu": {"image": "x:1", "size": 1}}}
    entry = _entry("s", **cpu)
    downloaded = ServiceState(service_id="s", downloaded=True)
    ready = ServiceState(service_id="s", phase="ready", running=True, ready=True, downloaded=True, host_port=1)
    assert listed(entry, ready, FACTS, autostart=False)
    assert not listed(entry, downloaded, FACTS, autostart=False)
    assert listed(entry, downloaded, FACTS, autostart=True)
    assert not listed(entry, None, FACTS, autostart=True)  # not downloaded
    assert not listed(entry, ServiceState(service_id="s"), FACTS, autostart=True)
    gpu_only = _entry("g", dockerImages={"gpu": {"image": "x:1", "size": 1}})
    assert not listed(gpu_only, ServiceState(service_id="g", downloaded=True), FACTS, autostart=True)  # unsupported
    assert not listed(None, downloaded, FACTS, autostart=True)  # gone from the catalog and not running
