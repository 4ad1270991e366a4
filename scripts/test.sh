#!/usr/bin/env bash
# Install everything the tests need (Docker engine, OCI registry, debootstrap, the venv) and run
# ruff, mypy --strict and the whole pytest suite. Docker tests fail (never skip) when no engine answers.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "$(id -u)" -eq 0 ]]; then
    bash scripts/install-system-deps.sh
else
    echo "[test] not root: assuming Docker, docker-registry and debootstrap are installed and running" >&2
fi
bash scripts/venv.sh dev
export PREMD_REQUIRE_DOCKER=1 PREMD_NO_SKIPS=1
echo "[test] ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "[test] mypy --strict"
.venv/bin/mypy
echo "[test] pytest"
.venv/bin/pytest -q -rs "$@"
