#!/usr/bin/env bash
# Install and start the system dependencies premd's tests need on Debian bookworm:
#   docker.io (engine + CLI), docker-registry (OCI registry for push/pull tests),
#   debootstrap (builds the local base image), iptables (dockerd networking),
#   docker-compose (brings up deploy/compose.yaml in the compose test).
# Idempotent: installs only what is missing, starts dockerd only if no engine answers.
# Run as root.
set -euo pipefail

LOG_FILE="${PREMD_DOCKERD_LOG:-/var/log/premd-dockerd.log}"
DEADLINE_S="${PREMD_DOCKERD_DEADLINE_S:-60}"

say() { printf '[install-system-deps] %s\n' "$*"; }
die() { printf '[install-system-deps] ERROR: %s\n' "$*" >&2; exit 1; }

if [[ "$(id -u)" -ne 0 ]]; then
    die "must run as root (try: sudo $0)"
fi

# package -> a command it provides
declare -A PROVIDES=(
    [docker.io]=dockerd
    [docker-registry]=docker-registry
    [debootstrap]=debootstrap
    [iptables]=iptables
    [docker-compose]=docker-compose
)

missing=()
for pkg in docker.io docker-registry debootstrap iptables docker-compose; do
    if dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' \
        && command -v "${PROVIDES[$pkg]}" >/dev/null 2>&1; then
        say "already installed: $pkg"
    else
        missing+=("$pkg")
    fi
done

if [[ ${#missing[@]} -gt 0 ]]; then
    say "installing: ${missing[*]}"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
else
    say "all packages present, skipping apt-get"
fi

start_dockerd() {
    say "starting dockerd in the background (log: $LOG_FILE)"
    mkdir -p "$(dirname "$LOG_FILE")"
    nohup dockerd >>"$LOG_FILE" 2>&1 </dev/null &
    say "dockerd pid $!"
}

dockerd_running() { pgrep -x dockerd >/dev/null 2>&1; }

if docker info >/dev/null 2>&1; then
    say "a Docker engine already answers; not starting dockerd"
else
    if dockerd_running; then
        say "a dockerd process exists but does not answer yet; waiting for it"
    else
        start_dockerd
    fi
    starts=1
    deadline=$(( $(date +%s) + DEADLINE_S ))
    until docker info >/dev/null 2>&1; do
        # A dockerd that was shutting down, or that died on start (stale pid file), gets one more start.
        if ! dockerd_running && (( starts < 3 )); then
            rm -f /var/run/docker.pid
            start_dockerd
            starts=$(( starts + 1 ))
        fi
        if (( $(date +%s) >= deadline )); then
            say "last lines of $LOG_FILE:" >&2
            tail -n 30 "$LOG_FILE" >&2 || true
            die "Docker engine did not answer 'docker info' within ${DEADLINE_S}s"
        fi
        sleep 0.5
    done
    say "Docker engine is up"
fi

say "engine: $(docker version --format 'server {{.Server.Version}}, API {{.Server.APIVersion}}' 2>/dev/null || echo unknown)"
say "done"
