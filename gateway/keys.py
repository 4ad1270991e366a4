"""Typed application state keys."""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

from aiohttp import web
from nats.aio.client import Client as NATS

from common.settings import Settings
from gateway.view import GatewayView

if TYPE_CHECKING:
    from gateway.listing import Listing
    from gateway.streams import Channel

SETTINGS = web.AppKey("settings", Settings)
NC = web.AppKey("nc", NATS)
VIEW = web.AppKey("view", GatewayView)
STREAMS: web.AppKey[weakref.WeakSet[Channel[Any]]] = web.AppKey("streams", weakref.WeakSet)
"""Open streaming responses and waits: closed on shutdown so they end cleanly."""
LISTING: web.AppKey[Listing] = web.AppKey("listing")
"""The encoded service list, cached until the catalog, observed state or host facts change."""
