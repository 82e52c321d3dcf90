#!/usr/bin/env bash
# Starts a throwaway PostgreSQL for the store tests and prints one line for the caller to eval:
#
#   eval "$(bash .ci/postgres.sh)"      # -> export STEPWISE_TEST_POSTGRES_URL=postgres://…
#   cargo test --features postgres --test store_suite
#
# - Installs Debian's `postgresql` package when no server binaries are found (needs root).
# - The cluster lives in $STEPWISE_PG_DIR (default: $TMPDIR/stepwise-ci-postgres), listens only on
#   127.0.0.1 on a free port, with password (SCRAM) auth and a random password. It runs as the
#   `postgres` user when this script runs as root (postgres refuses to run as root).
# - fsync is off: a CI throwaway, not a durability test; never reuse these settings.
# - Idempotent: when the cluster is already running it is reused, so a second call costs ~0.1 s.
# - `bash .ci/postgres.sh stop` stops it and deletes the directory.
# - `bash .ci/postgres.sh down` / `up` stop and start the server and keep its data (the
#   outage tests take the database away under load and bring it back).
# Everything except the export line goes to stderr.
set -euo pipefail
cd /  # the postgres user may not be able to read the caller's directory

dir=${STEPWISE_PG_DIR:-${TMPDIR:-/tmp}/stepwise-ci-postgres}
data=$dir/data
db=stepwise_test
user=stepwise

log() { echo "postgres.sh: $*" >&2; }

find_bindir() {
    local d
    if command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/pg_ctl" ]; then
        pg_config --bindir
        return
    fi
    # Debian puts the server binaries under /usr/lib/postgresql/<major>/bin; take the newest.
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [ -x "$d/pg_ctl" ] && [ -x "$d/initdb" ]; then
            echo "$d"
            return
        fi
    done
}

bindir=$(find_bindir || true)
if [ -z "$bindir" ]; then
    if [ "$(id -u)" -ne 0 ]; then
        log "no PostgreSQL server found and not root: install the 'postgresql' package"
        exit 1
    fi
    log "installing postgresql from Debian's packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends postgresql >&2
    bindir=$(find_bindir)
fi

# Run a server binary as the cluster's owner.
as_owner() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

if [ "${1:-}" = "stop" ]; then
    if [ -f "$data/PG_VERSION" ]; then
        as_owner "$bindir/pg_ctl" -D "$data" -m fast -w stop >&2 || true
    fi
    rm -rf "$dir"
    log "stopped and removed $dir"
    exit 0
fi

# The server's settings; $port must be set.
server_opts() {
    echo "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
}

if [ "${1:-}" = "down" ]; then
    as_owner "$bindir/pg_ctl" -D "$data" -m fast -w stop >&2
    exit 0
fi
if [ "${1:-}" = "up" ]; then
    port=$(cat "$dir/port")
    as_owner "$bindir/pg_ctl" -D "$data" -l "$dir/server.log" -w -t 60 \
        -o "$(server_opts)" \
        start >&2
    exit 0
fi

url_for() { echo "postgres://$user:$(cat "$dir/password")@127.0.0.1:$(cat "$dir/port")/$db"; }

if [ -f "$dir/ready" ] && as_owner "$bindir/pg_ctl" -D "$data" status >/dev/null 2>&1; then
    log "reusing the running cluster in $dir"
    echo "export STEPWISE_TEST_POSTGRES_URL=$(url_for)"
    exit 0
fi

# A half-made or stopped cluster: start over (it only ever holds test data).
if [ -f "$data/postmaster.pid" ]; then
    as_owner "$bindir/pg_ctl" -D "$data" -m immediate -w stop >&2 2>/dev/null || true
fi
rm -rf "$dir"
mkdir -p "$dir"
chmod 700 "$dir"
# 16 random hex characters; URL-safe.
od -An -N8 -tx1 /dev/urandom | tr -d ' \n' >"$dir/password"
pwfile=$dir/pwfile
# initdb's superuser gets the same password; it is only used to create the database.
cp "$dir/password" "$pwfile"
if [ "$(id -u)" -eq 0 ]; then
    chown -R postgres: "$dir"
fi

# A free port: ask the kernel for one (bind to port 0), falling back to probing.
port=""
if command -v python3 >/dev/null 2>&1; then
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null || true)
fi
if [ -z "$port" ]; then
    for p in $(seq 54320 54420); do
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            port=$p
            break
        fi
    done
fi
[ -n "$port" ] || { log "no free port found"; exit 1; }
echo "$port" >"$dir/port"

log "initdb in $data (PostgreSQL $("$bindir/postgres" --version | awk '{print $3}'))"
as_owner "$bindir/initdb" -D "$data" -U postgres --pwfile="$pwfile" --auth=scram-sha-256 \
    --encoding=UTF8 --locale=C --no-sync >&2
rm -f "$pwfile"

log "starting on 127.0.0.1:$port"
as_owner "$bindir/pg_ctl" -D "$data" -l "$dir/server.log" -w -t 60 \
    -o "$(server_opts)" \
    start >&2 || { cat "$dir/server.log" >&2; exit 1; }

export PGPASSWORD
PGPASSWORD=$(cat "$dir/password")
psql_admin() { "$bindir/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d postgres "$@"; }
psql_admin -c "CREATE ROLE $user LOGIN PASSWORD '$PGPASSWORD'" >&2
psql_admin -c "CREATE DATABASE $db OWNER $user" >&2
touch "$dir/ready"
log "ready: database $db on 127.0.0.1:$port"
echo "export STEPWISE_TEST_POSTGRES_URL=$(url_for)"
