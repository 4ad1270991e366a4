"""Where premd looks for the Docker engine (issue 9, defect 1): never an error, even with no engine installed."""

from __future__ import annotations

import socket
from pathlib import Path

from common.docker_host import DEFAULT_DOCKER_HOST, docker_host


def test_docker_host_env_then_first_socket_then_the_default(tmp_path: Path) -> None:
    missing, present = tmp_path / "missing.sock", tmp_path / "present.sock"
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind(str(present))
        sockets = (str(missing), str(present))
        assert docker_host({"DOCKER_HOST": "tcp://127.0.0.1:2375"}, sockets) == "tcp://127.0.0.1:2375"
        assert docker_host({}, sockets) == f"unix://{present}"
    assert docker_host({"DOCKER_HOST": " "}, (str(missing),)) == DEFAULT_DOCKER_HOST == "unix:///var/run/docker.sock"
