"""The scheduler component."""

from __future__ import annotations

from common import subjects
from common.component import ServiceComponent


class Scheduler(ServiceComponent):
    name = subjects.SCHEDULER
    description = "premd scheduler"
