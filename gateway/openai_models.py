"""``GET /v1/models``: which services an OpenAI client is offered, in OpenAI's shape plus premd's extension.

UIs and frameworks list models first and offer only what is listed. With autostart on, a request for a
stopped service starts it, so every service that could answer is listed: downloaded and supported on
this machine (or already ready), running or not. With autostart off only ready services can answer, so
only they are listed. Pure: from the gateway view's values.
"""

from __future__ import annotations

import msgspec

from common.messages import CatalogEntry, DesiredState, HostFacts, ServiceState
from gateway.autostart import is_downloaded
from gateway.service_json import fit_of
from gateway.view import GatewayView


class PremdModelInfo(msgspec.Struct, frozen=True):
    """premd's extension of a model card (OpenAI clients ignore keys they do not know)."""

    name: str
    """The service's display name."""
    state: str
    """The service's phase: ready, stopped, starting, failed, crashloop, ..."""
    running: bool
    ready: bool
    interfaces: list[str]
    """Prem interfaces (chat, embeddings, text-to-image, audio-to-text, ...): which OpenAI routes it serves."""
    on_demand: bool
    """It runs because a request started it (autostart): stopped again when idle."""


class ModelCard(msgspec.Struct, frozen=True):
    id: str
    created: int
    """Unix time of the service's last state change (0: never run here)."""
    premd: PremdModelInfo
    object: str = "model"
    owned_by: str = "premd"


class ModelList(msgspec.Struct, frozen=True):
    data: list[ModelCard]
    object: str = "list"


def listed(entry: CatalogEntry | None, state: ServiceState | None, facts: HostFacts | None, autostart: bool) -> bool:
    """Whether an OpenAI client is offered this service."""
    if state is not None and state.phase == "ready":
        return True
    if not autostart or entry is None or not is_downloaded(state):
        return False
    return fit_of(entry, state, facts).supported


def card(
    service_id: str, entry: CatalogEntry | None, state: ServiceState | None, desired: DesiredState | None
) -> ModelCard:
    on_demand = desired is not None and desired.running and desired.on_demand
    info = PremdModelInfo(
        name=entry.manifest.name if entry is not None else service_id,
        state=state.phase if state is not None else "stopped",
        running=state is not None and state.running,
        ready=state is not None and state.phase == "ready",
        interfaces=list(entry.manifest.interfaces) if entry is not None else [],
        on_demand=on_demand,
    )
    return ModelCard(id=service_id, created=int(state.updated_at) if state is not None else 0, premd=info)


def model_list(view: GatewayView, autostart: bool) -> ModelList:
    """Catalog order; services observed but no longer in the catalog (still running) come last."""
    facts = view.host
    observed = view.observed.values
    desired = view.desired.values
    cards: list[ModelCard] = []
    seen: set[str] = set()
    for entry in view.catalog.entries():
        service_id = entry.manifest.id
        seen.add(service_id)
        state = observed.get(service_id)
        if listed(entry, state, facts, autostart):
            cards.append(card(service_id, entry, state, desired.get(service_id)))
    for service_id in sorted(set(observed) - seen):
        state = observed[service_id]
        if listed(None, state, facts, autostart):
            cards.append(card(service_id, None, state, desired.get(service_id)))
    return ModelList(data=cards)


def one_model(view: GatewayView, service_id: str, autostart: bool) -> ModelCard | None:
    entry, state = view.catalog.get(service_id), view.state(service_id)
    if not listed(entry, state, view.host, autostart):
        return None
    return card(service_id, entry, state, view.desired.values.get(service_id))
