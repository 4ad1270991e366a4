"""Pure reconcile decisions: desired state vs the containers Docker has -> actions. No I/O.

A service's containers are those labelled with its id and this premd's instance (see ``owner``),
plus (premd compatibility) an unlabelled container named exactly after a known service id whose image
is one of the service's (same repository, any tag: the Python premd ran older tags too). A user's own
``docker run --name qdrant <other image>`` is not premd's: never adopted, stopped or removed. Rules:

- A service with an operation in flight is left alone (the operation owns it).
- Desired running: a running container is adopted (duplicates are removed); none, or only a
  created/exited one, means start (after a crash: with backoff, decided by the caller).
- Not desired (or no desired state): premd-labelled containers that run are orphans and are removed;
  exited ones are kept so their logs survive (prune removes them). An unlabelled container named after
  a known service is never removed by reconcile; when it runs and nothing is desired it is adopted
  (the desired state becomes "running"), as premd would have listed it as running.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import msgspec

from common.manifest import Manifest
from common.messages import CatalogEntry, DesiredState
from scheduler.docker_driver import ContainerInfo
from scheduler.state import normalize_ref, split_ref

CRASHLOOP_AFTER = 3
"""Crashes in a row (each within CRASH_WINDOW_S of the previous) that make a crash loop."""
CRASH_WINDOW_S = 600.0


class Remove(msgspec.Struct, frozen=True, tag=True):
    service_id: str
    container: ContainerInfo
    reason: str


class Adopt(msgspec.Struct, frozen=True, tag=True):
    """The service's live container: observe it (and record desired "running" when nothing was desired)."""

    service_id: str
    container: ContainerInfo
    record_desired: bool = False


class Start(msgspec.Struct, frozen=True, tag=True):
    """The service should run and does not. ``previous`` is the dead container, if any (a crash when it exited)."""

    service_id: str
    previous: ContainerInfo | None = None

    @property
    def crashed(self) -> bool:
        return self.previous is not None and self.previous.state in ("exited", "dead")


class Idle(msgspec.Struct, frozen=True, tag=True):
    """Nothing runs and nothing should: observed state is "not running" (``container`` = a kept dead one)."""

    service_id: str
    container: ContainerInfo | None = None


Action = Remove | Adopt | Start | Idle


Known = Mapping[str, frozenset[str]]
"""Catalog services by id, each with the image repositories of its manifest (cpu and gpu images)."""


def repository(ref: str) -> str:
    """``docker.io/library/redis:7`` and ``redis:6`` -> ``redis``: what an image is, whatever its tag."""
    return split_ref(normalize_ref(ref))[0]


def image_repositories(manifest: Manifest) -> frozenset[str]:
    images = manifest.docker_images
    if images is None:
        return frozenset()
    return frozenset(repository(e.image) for e in (images.cpu, images.gpu) if e is not None)


def known_services(entries: Iterable[CatalogEntry]) -> dict[str, frozenset[str]]:
    return {e.manifest.id: image_repositories(e.manifest) for e in entries}


def owner(container: ContainerInfo, known: Known, instance: str, home: str = "") -> str | None:
    """The service a container belongs to, or None when it is not this premd's.

    Strict, because several premds (and test runs) share one engine: a premd-labelled container is this
    premd's only when its instance label is this premd's. One with another instance label, or none at all,
    is never this one's (not reaped, stopped, removed or adopted), even when named after a service id
    this premd knows; nor is an unlabelled one that runs another image than the service's. The one
    exception: a container of another instance made at this premd's ``home`` (a data directory, given only
    when the premd runs its own embedded NATS there) is this premd's from before that directory was
    wiped: its own again.
    """
    if container.managed:
        if not container.instance or not container.service_id:
            return None
        ours = container.instance == instance or (bool(home) and container.home == home)
        return container.service_id if ours else None
    repositories = known.get(container.name)
    if repositories and repository(container.image) in repositories:
        return container.name
    return None


def _rank(service_id: str, c: ContainerInfo) -> tuple[bool, bool, int, float]:
    return (c.running, c.name == service_id, c.generation, c.created)


def decide(
    known: Known,
    desired: Mapping[str, DesiredState],
    containers: Iterable[ContainerInfo],
    busy: set[str],
    instance: str,
    home: str = "",
) -> list[Action]:
    """What to do for every service that is known, desired or has a container of this premd."""
    by_service: dict[str, list[ContainerInfo]] = {}
    for c in containers:
        sid = owner(c, known, instance, home)
        if sid is not None:
            by_service.setdefault(sid, []).append(c)
    actions: list[Action] = []
    for sid in sorted(set(known) | set(desired) | set(by_service)):
        if sid in busy:
            continue
        actions.extend(_decide_one(sid, desired.get(sid), by_service.get(sid, [])))
    return actions


def _decide_one(sid: str, desired: DesiredState | None, found: list[ContainerInfo]) -> list[Action]:
    ranked = sorted(found, key=lambda c: _rank(sid, c), reverse=True)
    primary = ranked[0] if ranked else None
    actions: list[Action] = []
    if desired is not None and desired.running:
        # Duplicates go, whatever their state: one container per service.
        actions += [Remove(sid, c, "duplicate") for c in ranked[1:] if c.managed]
        if primary is not None and primary.running:
            actions.append(Adopt(sid, primary))
        else:
            actions.append(Start(sid, primary))
        return actions
    adopt = desired is None and primary is not None and primary.running and not primary.managed
    kept: ContainerInfo | None = None
    for c in ranked:
        if adopt and c is primary:
            continue
        if c.managed and c.state in ("running", "restarting", "paused", "created"):
            actions.append(Remove(sid, c, "orphan"))
        elif kept is None and not c.running:
            kept = c
    if adopt and primary is not None:
        actions.append(Adopt(sid, primary, record_desired=True))
    else:
        actions.append(Idle(sid, kept))
    return actions


# ---------------------------------------------------------------- crash backoff (pure)


class Backoff(msgspec.Struct, frozen=True):
    container_id: str
    """The dead container this record is about (one record per crash)."""
    crashes: int
    last_crash_at: float
    next_start_at: float

    @property
    def crashloop(self) -> bool:
        return self.crashes >= CRASHLOOP_AFTER


def after_crash(previous: Backoff | None, container_id: str, now: float, base_s: float, cap_s: float) -> Backoff:
    """The backoff after a crash: doubles per crash in a row, capped; a quiet window resets it."""
    if previous is not None and previous.container_id == container_id:
        return previous
    in_a_row = previous is not None and now - previous.last_crash_at <= CRASH_WINDOW_S
    crashes = previous.crashes + 1 if previous is not None and in_a_row else 1
    delay = min(base_s * 2 ** (crashes - 1), cap_s)
    return Backoff(container_id=container_id, crashes=crashes, last_crash_at=now, next_start_at=now + delay)
