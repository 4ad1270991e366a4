"""Registry documents as a user writes them (premd's manifest JSON), for tests that run premd from a file."""

from __future__ import annotations

from typing import Any

from tests.testbed.util import free_port


def chat_manifest(service_id: str, image: str, name: str, **extra: Any) -> dict[str, Any]:
    """A chat service running ``image`` (the reference service) on a free host port, with a data volume."""
    return {
        "id": service_id,
        "name": name,
        "description": "reference chat service",
        "documentation": "",
        "icon": "",
        "modelInfo": {"memoryRequirements": 64, "tokensPerSecond": 20},
        "interfaces": ["chat"],
        "dockerImages": {"cpu": {"size": 200_000_000, "image": image}},
        "defaultPort": 8000,
        "defaultExternalPort": free_port(),
        "volumePath": "/data",
        **extra,
    }
