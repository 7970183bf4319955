#!/usr/bin/env bash
# Install the system tools the test suite calls, where they are missing:
#   redis-server (tests start their own Redis), promtool (checks the Prometheus rules),
#   pg_dump (backup/restore tests).
# Silent when everything is there. Without apt-get (a laptop on another OS), or without
# root, it says what is missing and carries on, and the tests that need a tool skip;
# under CI=true a tool that cannot be installed is an error.
set -euo pipefail

# "binary|debian package" pairs.
wanted=(
    "redis-server|redis-server"
    "promtool|prometheus"
    "pg_dump|postgresql-client"
)

have() {
    command -v "$1" >/dev/null 2>&1 || [ -x "/usr/bin/$1" ] || [ -x "/usr/sbin/$1" ]
}

missing=()
for pair in "${wanted[@]}"; do
    have "${pair%%|*}" || missing+=("${pair#*|}")
done
[ ${#missing[@]} -eq 0 ] && exit 0

give_up() {
    if [ "${CI:-}" = "true" ]; then
        echo "setup-test-deps: $1 (needed: ${missing[*]})" >&2
        exit 1
    fi
    echo "setup-test-deps: $1; tests needing ${missing[*]} will be skipped" >&2
    exit 0
}

command -v apt-get >/dev/null 2>&1 || give_up "no apt-get here, install ${missing[*]} yourself"

sudo=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo=(sudo -n)
    else
        give_up "not root and no password-less sudo: run 'sudo apt-get install ${missing[*]}'"
    fi
fi

echo "setup-test-deps: installing ${missing[*]}"

# Only the binaries are wanted: keep package scripts from starting daemons (the standard
# Debian switch is a policy-rc.d that answers 101). Left alone if the machine has one.
policy=/usr/sbin/policy-rc.d
own_policy=false
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
    "${sudo[@]}" chmod 755 "$policy"
    own_policy=true
fi
cleanup() {
    if $own_policy; then "${sudo[@]}" rm -f "$policy"; fi
}
trap cleanup EXIT

# Pids of running prometheus servers (read from /proc: pgrep is not always installed).
prometheus_pids() {
    local dir
    for dir in /proc/[0-9]*; do
        [ "$(cat "$dir/comm" 2>/dev/null)" = prometheus ] && echo "${dir#/proc/}"
    done
    return 0
}
prometheus_before=$(prometheus_pids)

export DEBIAN_FRONTEND=noninteractive
if ! { "${sudo[@]}" apt-get update -qq &&
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }; then
    give_up "apt-get could not install ${missing[*]}"
fi

# If the prometheus package started a server anyway (a systemd host ignoring the policy),
# stop it: only promtool is wanted, and the server would hold port 9090.
if [[ " ${missing[*]} " == *" prometheus "* ]]; then
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        "${sudo[@]}" systemctl disable --now prometheus >/dev/null 2>&1 || true
    fi
    for pid in $(prometheus_pids); do
        if ! grep -qx "$pid" <<<"$prometheus_before"; then
            "${sudo[@]}" kill "$pid" 2>/dev/null || true
        fi
    done
fi

still=()
for pair in "${wanted[@]}"; do
    have "${pair%%|*}" || still+=("${pair#*|}")
done
if [ ${#still[@]} -ne 0 ]; then
    missing=("${still[@]}")
    give_up "installed, but still not found"
fi
