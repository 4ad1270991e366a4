"""The builder component."""

from __future__ import annotations

from common import subjects
from common.component import ServiceComponent


class Builder(ServiceComponent):
    name = subjects.BUILDER
    description = "premd builder"
