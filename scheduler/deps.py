"""What the scheduler's operations share: their dependencies (built once) and the record of one operation."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from common.catalog import CatalogView
from common.messages import HostFacts, OperationKind
from common.settings import Settings
from scheduler.docker_driver import DockerDriver
from scheduler.events import EventPublisher
from scheduler.ports import PortAllocator
from scheduler.state import DesiredStore, ObservedStore
from scheduler.tasks import TaskOwner


@dataclass
class Op:
    """An operation in flight on one service (at most one per service)."""

    id: str
    kind: OperationKind
    service_id: str
    task: asyncio.Task[None] | None = None


@dataclass
class Deps:
    """What the operations work with (built once by the component)."""

    settings: Settings
    driver: DockerDriver
    catalog: CatalogView
    desired: DesiredStore
    observed: ObservedStore
    events: EventPublisher
    tasks: TaskOwner
    facts: Callable[[], HostFacts | None]
    ports: PortAllocator
    instance: str
    """This premd's id, on the labels of every container it makes."""
    home: str = ""
    """Where this premd keeps its state (``LABEL_HOME``)."""
    reclaim_home: str = ""
    """``home`` when containers labelled with it are this premd's whatever their instance (see ``owner``)."""
