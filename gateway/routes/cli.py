"""The routes the ``premd`` command line added (issue 12): pull start/cancel, service logs, states and system."""

from __future__ import annotations

from aiohttp import web

from gateway.routes import logs, pulls, states

TABLES: tuple[web.RouteTableDef, ...] = (pulls.routes, logs.routes, states.routes)
