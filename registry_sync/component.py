"""The registry_sync component."""

from __future__ import annotations

from common import subjects
from common.component import ServiceComponent


class RegistrySync(ServiceComponent):
    name = subjects.REGISTRY_SYNC
    description = "premd registry_sync"
