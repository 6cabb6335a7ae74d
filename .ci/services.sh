#!/usr/bin/env bash
# Throwaway PostgreSQL 15 and Redis servers for the tests that need them.
#
#   eval "$(.ci/services.sh start)"   # starts both, prints the export lines
#   .ci/services.sh stop              # stops both (reads CALM_SERVICES_DIR)
#
# `start` prints CALM_TEST_POSTGRES (a conninfo URL), CALM_TEST_REDIS (a redis
# URL) and CALM_SERVICES_DIR (where their data and logs live). Both servers
# listen on free loopback ports only, Postgres with trust authentication: they
# are for tests, never for data. PostgreSQL refuses to run as root, so under
# root it runs as the `postgres` system user (created if missing).
set -euo pipefail

PG_BIN=${PG_BIN:-}
if [[ -z "$PG_BIN" ]]; then
    if command -v initdb >/dev/null 2>&1; then
        PG_BIN=$(dirname "$(readlink -f "$(command -v initdb)")")
    else
        PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
    fi
fi

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

as_pg_user() {
    if [[ $(id -u) -eq 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

start() {
    if [[ ! -x "$PG_BIN/initdb" ]]; then
        echo "services.sh: PostgreSQL binaries not found (set PG_BIN to the folder holding initdb)" >&2
        exit 1
    fi
    if ! command -v redis-server >/dev/null 2>&1; then
        if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
            echo "services.sh: installing redis-server" >&2
            (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) >&2
        else
            echo "services.sh: redis-server is missing (apt-get install redis-server)" >&2
            exit 1
        fi
    fi
    if [[ $(id -u) -eq 0 ]] && ! id postgres >/dev/null 2>&1; then
        useradd --system --no-create-home --shell /usr/sbin/nologin postgres
    fi
    local dir pg_port redis_port
    dir=$(mktemp -d "${TMPDIR:-/tmp}/calm-services.XXXXXX")
    chmod 755 "$dir"
    mkdir "$dir/pg"
    if [[ $(id -u) -eq 0 ]]; then chown postgres "$dir/pg"; fi
    as_pg_user "$PG_BIN/initdb" --pgdata="$dir/pg/data" --username=postgres --auth=trust \
        --encoding=UTF8 --locale=C.UTF-8 >"$dir/pg/initdb.log" 2>&1 \
        || { cat "$dir/pg/initdb.log" >&2; exit 1; }
    pg_port=$(free_port)
    # The tests kill clients, never the server, so not waiting for the WAL
    # flush at commit loses nothing they check and saves an fsync per commit.
    # The benchmarks override it (docs/performance.md says which they use).
    as_pg_user "$PG_BIN/pg_ctl" start --wait --timeout=60 --pgdata="$dir/pg/data" --log="$dir/pg/server.log" \
        -o "-p $pg_port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$dir/pg -c max_connections=300 \
            -c synchronous_commit=${CALM_PG_SYNCHRONOUS_COMMIT:-off} -c shared_buffers=256MB" >&2 \
        || { cat "$dir/pg/server.log" >&2; exit 1; }
    redis_port=$(free_port)
    redis-server --bind 127.0.0.1 --port "$redis_port" --daemonize yes --dir "$dir" \
        --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" --save '' --appendonly no >&2
    for _ in $(seq 50); do
        if redis-cli -p "$redis_port" ping >/dev/null 2>&1; then break; fi
        sleep 0.1
    done
    redis-cli -p "$redis_port" ping >/dev/null
    cat >"$dir/env" <<ENV
export CALM_SERVICES_DIR=$dir
export CALM_TEST_POSTGRES=postgresql://postgres@127.0.0.1:$pg_port/postgres
export CALM_TEST_REDIS=redis://127.0.0.1:$redis_port/0
ENV
    cat "$dir/env"
}

stop() {
    local dir=${1:-${CALM_SERVICES_DIR:-}}
    if [[ -z "$dir" || ! -d "$dir" ]]; then
        echo "services.sh stop: no services folder (pass it, or set CALM_SERVICES_DIR)" >&2
        return 0
    fi
    if [[ -f "$dir/pg/data/postmaster.pid" ]]; then
        as_pg_user "$PG_BIN/pg_ctl" stop --pgdata="$dir/pg/data" --mode=immediate --wait >&2 || true
    fi
    if [[ -f "$dir/redis.pid" ]]; then
        kill "$(cat "$dir/redis.pid")" 2>/dev/null || true
    fi
    rm -rf "$dir"
}

case "${1:-}" in
    start) start ;;
    stop) stop "${2:-}" ;;
    *) echo "usage: $0 start | stop [DIR]" >&2; exit 2 ;;
esac
