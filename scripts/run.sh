#!/usr/bin/env bash
# `make run`: the whole engine on this machine. Uses the Redis at REDIS_URL, or starts a
# local one under the state directory; applies the migrations; then runs the API, a
# worker, beat and Flower under honcho (Procfile) until Ctrl-C, which stops them all.
#
# Environment (all optional):
#   ENGINE_VAR_DIR  state directory: SQLite database, secrets, Redis data (default var)
#   DATABASE_URL    default sqlite:///<ENGINE_VAR_DIR>/engine.db
#   REDIS_URL       default redis://localhost:6379/0
#   LOG_DIR         default <ENGINE_VAR_DIR>/log
#   API_BIND, API_PORT           gunicorn bind (default 127.0.0.1, 8000)
#   API_METRICS_HOST, API_METRICS_PORT  the API's /metrics, for Prometheus (127.0.0.1, 9101)
#   FLOWER_ADDRESS, FLOWER_PORT  Flower bind (default 127.0.0.1, 5555)
#   WORKER_HEALTH_HOST, WORKER_HEALTH_PORT  worker /health and /metrics (127.0.0.1, 8080)
#   FLOWER_BASIC_AUTH            user:password; generated once into <ENGINE_VAR_DIR>/flower_auth
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
py=$root/.venv/bin/python

die() {
    printf '%s\n' "$*" >&2
    exit 1
}

[ -x "$py" ] || die "No virtualenv in $root/.venv: run 'make run' (or 'make venv') instead."

# Until the stack runs, an interrupt just ends the script (and the EXIT trap cleans up).
trap 'exit 130' INT
trap 'exit 143' TERM HUP

var_dir=${ENGINE_VAR_DIR:-var}
mkdir -p "$var_dir"
var_dir=$(cd "$var_dir" && pwd)
export ENGINE_VAR_DIR=$var_dir
export DATABASE_URL=${DATABASE_URL:-sqlite:///$var_dir/engine.db}
export REDIS_URL=${REDIS_URL:-redis://localhost:6379/0}
export LOG_DIR=${LOG_DIR:-$var_dir/log}
export API_BIND=${API_BIND:-127.0.0.1}
export API_PORT=${API_PORT:-8000}
export API_METRICS_HOST=${API_METRICS_HOST:-127.0.0.1}
export API_METRICS_PORT=${API_METRICS_PORT:-9101}
export FLOWER_ADDRESS=${FLOWER_ADDRESS:-127.0.0.1}
export FLOWER_PORT=${FLOWER_PORT:-5555}
export WORKER_HEALTH_HOST=${WORKER_HEALTH_HOST:-127.0.0.1}
export WORKER_HEALTH_PORT=${WORKER_HEALTH_PORT:-8080}
# Dead letters link to their task in this Flower.
export FLOWER_URL=${FLOWER_URL:-http://localhost:$FLOWER_PORT}
mkdir -p "$LOG_DIR"
# The Procfile gives the API and the worker each a prometheus_client multiprocess directory
# here, so their /metrics sum all their forked processes.
mkdir -p "$var_dir/metrics/api" "$var_dir/metrics/worker"

# redis_probe WAIT_SECONDS [PID]: 0 when Redis answers PING within the wait, 1 when nothing
# answers (or PID died first), 2 when something answered with an error (printed).
redis_probe() {
    "$py" - "$REDIS_URL" "$@" <<'PY'
import os
import sys
import time

import redis

url, wait = sys.argv[1], float(sys.argv[2])
watched_pid = int(sys.argv[3]) if len(sys.argv) > 3 else None
deadline = time.monotonic() + wait
while True:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)
        if client.ping():
            sys.exit(0)
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        pass
    except redis.RedisError as exc:
        print(f"Redis at {url} answered with an error: {exc}", file=sys.stderr)
        sys.exit(2)
    except ValueError as exc:
        print(f"REDIS_URL is not valid ({url}): {exc}", file=sys.stderr)
        sys.exit(2)
    if watched_pid is not None:
        try:
            os.kill(watched_pid, 0)
        except ProcessLookupError:
            sys.exit(1)
    if time.monotonic() >= deadline:
        sys.exit(1)
    time.sleep(0.1)
PY
}

# Prints "HOST PORT" when REDIS_URL names a password-less redis:// server on this machine
# that we may start ourselves, else nothing.
local_redis_address() {
    "$py" - "$REDIS_URL" <<'PY'
import sys
from urllib.parse import urlsplit

parts = urlsplit(sys.argv[1])
try:
    port = parts.port or 6379
except ValueError:
    sys.exit(0)
if (
    parts.scheme == "redis"
    and parts.hostname in ("localhost", "127.0.0.1", "::1")
    and not parts.password
    and not parts.username
):
    print("::1" if parts.hostname == "::1" else "127.0.0.1", port)
PY
}

redis_pid=
stop_redis() {
    if [ -n "$redis_pid" ] && kill -0 "$redis_pid" 2>/dev/null; then
        # SIGTERM: Redis flushes its append-only file and exits.
        kill -TERM "$redis_pid" 2>/dev/null || true
        wait "$redis_pid" 2>/dev/null || true
    fi
    rm -f "$var_dir/redis.pid"
}
trap stop_redis EXIT

start_redis=false
probe=0
redis_probe 0 || probe=$?
if [ "$probe" -eq 2 ]; then
    exit 1
elif [ "$probe" -ne 0 ]; then
    address=$(local_redis_address)
    if [ -z "$address" ]; then
        die "Redis is not reachable at $REDIS_URL: start it, or set REDIS_URL to a running Redis (only a password-less redis://localhost URL is started automatically)."
    elif ! command -v redis-server >/dev/null 2>&1; then
        die "Redis is not reachable at $REDIS_URL: install it (apt-get install redis-server) or set REDIS_URL to a running Redis."
    fi
    read -r redis_bind redis_port <<<"$address"
    start_redis=true
fi

# Applies the migrations; loading the settings also creates $ENGINE_VAR_DIR/jwt_secret and
# webhook_secret (mode 0600) when JWT_SECRET or WEBHOOK_SECRET is unset, before any process
# needs them.
"$root/.venv/bin/engine" db upgrade

flower_note="credentials from FLOWER_BASIC_AUTH"
if [ -z "${FLOWER_BASIC_AUTH:-}" ]; then
    auth_file=$var_dir/flower_auth
    if [ ! -s "$auth_file" ]; then
        (
            umask 077
            "$py" -c 'import secrets, string
alphabet = string.ascii_letters + string.digits
print("admin:" + "".join(secrets.choice(alphabet) for _ in range(24)))' >"$auth_file"
        )
    fi
    chmod 600 "$auth_file"
    FLOWER_BASIC_AUTH=$(head -n 1 "$auth_file")
    flower_note="user ${FLOWER_BASIC_AUTH%%:*}, password ${FLOWER_BASIC_AUTH#*:}; kept in $auth_file"
fi
# Flower reads FLOWER_BASIC_AUTH itself, so the password stays out of `ps`.
export FLOWER_BASIC_AUTH

# setsid: children started here get their own session, so a Ctrl-C reaches only this
# script, which then stops them in order (the stack first, Redis last).
detach=()
command -v setsid >/dev/null 2>&1 && detach=(setsid)

if $start_redis; then
    mkdir -p "$var_dir/redis"
    "${detach[@]}" redis-server --bind "$redis_bind" --port "$redis_port" \
        --dir "$var_dir/redis" --appendonly yes --save "" --daemonize no \
        --logfile "$LOG_DIR/redis.log" </dev/null &
    redis_pid=$!
    echo "$redis_pid" >"$var_dir/redis.pid"
    if ! redis_probe 15 "$redis_pid"; then
        tail -n 5 "$LOG_DIR/redis.log" >&2 2>/dev/null || true
        die "Redis did not start on $redis_bind:$redis_port (log: $LOG_DIR/redis.log)."
    fi
    echo "Started Redis on $redis_bind:$redis_port (pid $redis_pid, data in $var_dir/redis)."
fi

mint_env=
[ "$var_dir" = "$root/var" ] || mint_env="ENGINE_VAR_DIR=$var_dir "
cat <<EOF

  API            http://localhost:$API_PORT  (docs at /docs)
  API metrics    http://localhost:$API_METRICS_PORT/metrics
  Flower         http://localhost:$FLOWER_PORT  ($flower_note)
  Worker health  http://localhost:$WORKER_HEALTH_PORT/health
  Database       $DATABASE_URL
  Redis          $REDIS_URL
  Logs           $LOG_DIR

  A token for the API:
    $mint_env.venv/bin/engine token mint admin@example.com --scopes 'admin.*,runs.*,workflows.*,schedules.*,life.read' --ttl 1h

  Ctrl-C stops everything.

EOF

"${detach[@]}" "$root/.venv/bin/honcho" start -f Procfile </dev/null &
honcho_pid=$!
stopping=false
forward() {
    stopping=true
    kill "-$1" "$honcho_pid" 2>/dev/null || true
}
trap 'forward INT' INT
trap 'forward TERM' TERM HUP

# `wait` returns early whenever a trapped signal arrives; keep waiting until honcho,
# which stops every process it started, has exited itself.
status=0
while kill -0 "$honcho_pid" 2>/dev/null; do
    status=0
    wait "$honcho_pid" || status=$?
done
stop_redis
if $stopping && { [ "$status" -eq 130 ] || [ "$status" -eq 143 ]; }; then
    exit 0
fi
exit "$status"
