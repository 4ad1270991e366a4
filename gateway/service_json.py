"""premd's Service JSON from what the gateway knows: catalog entry + observed state + host facts. Pure.

Dynamic fields come from the scheduler's observed state and are never stale (premd kept runningPort,
volumeName, downloadedDockerImage after the fact: docs/http-api.md, deviation 2). Fit flags and the image
choice come from common.fit, the same rules the scheduler enforces.
"""

from __future__ import annotations

from common.fit import Fit, assess
from common.messages import CatalogEntry, HostFacts, ServiceState
from gateway.schemas import Service


def proxy_base_url(scheme: str, host: str, service_id: str) -> str:
    """The gateway's own proxy for a service, as the client reached the gateway (no trailing slash)."""
    return f"{scheme}://{host}/proxy/{service_id}"


def fit_of(entry: CatalogEntry, state: ServiceState | None, facts: HostFacts | None) -> Fit:
    """The fit flags of a service on this host, given what the scheduler observed of it."""
    running = state is not None and state.running
    downloaded = state is not None and state.downloaded
    return assess(entry.manifest, facts, running=running, downloaded=downloaded)


def service_json(
    entry: CatalogEntry, state: ServiceState | None, facts: HostFacts | None, base_url: str, fit: Fit | None = None
) -> Service:
    """One service as premd listed it. ``state`` None: the scheduler has not seen it (not downloaded, stopped)."""
    manifest = entry.manifest
    running = state is not None and state.running
    downloaded = state is not None and state.downloaded
    fit = fit if fit is not None else fit_of(entry, state, facts)
    return Service(
        id=manifest.id,
        name=manifest.name,
        description=manifest.description,
        documentation=manifest.documentation,
        icon=manifest.icon,
        model_info=manifest.model_info,
        interfaces=manifest.interfaces,
        docker_image=fit.image.image if fit.image is not None else "",
        docker_image_size=fit.image.size if fit.image is not None else 0,
        default_port=manifest.default_port,
        default_external_port=manifest.default_external_port,
        running_port=state.host_port if running and state is not None else None,
        command=manifest.command,
        volume_path=manifest.volume_path,
        volume_name=state.volume_name if running and state is not None else None,
        running=running,
        downloaded=downloaded,
        downloaded_docker_image=state.downloaded_image if downloaded and state is not None else None,
        needs_update=downloaded and state is not None and state.needs_update,
        supported=fit.supported,
        enough_memory=fit.enough_memory,
        enough_system_memory=fit.enough_system_memory,
        enough_storage=fit.enough_storage,
        beta=manifest.beta,
        coming_soon=manifest.coming_soon,
        env_variables=manifest.env_variables,
        exec_commands=manifest.exec_commands,
        prompt_template=manifest.prompt_template,
        base_url=base_url,
    )
