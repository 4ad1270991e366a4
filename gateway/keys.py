"""Typed application state keys."""

from __future__ import annotations

from aiohttp import web
from nats.aio.client import Client as NATS

from common.settings import Settings
from gateway.view import GatewayView

SETTINGS = web.AppKey("settings", Settings)
NC = web.AppKey("nc", NATS)
VIEW = web.AppKey("view", GatewayView)
