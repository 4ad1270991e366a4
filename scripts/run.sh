#!/usr/bin/env bash
# Install premd into .venv and run it: `premd serve` (embedded NATS; the Docker engine is used if present).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/venv.sh
exec .venv/bin/premd serve "$@"
