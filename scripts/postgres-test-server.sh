#!/usr/bin/env bash
# A throwaway PostgreSQL server for the tests (ctest's `postgres` fixture, or by hand):
#   scripts/postgres-test-server.sh start STATE_DIR   # initdb + start on 127.0.0.1:<free port>
#   scripts/postgres-test-server.sh stop STATE_DIR    # stop it and delete its data
# `start` writes the connection URL (postgresql://postgres@127.0.0.1:PORT/postgres, trust
# authentication, loopback only) to STATE_DIR/url; the tests read it through
# SLIM_TEST_POSTGRES_URL_FILE. The cluster lives in a fresh directory under ${TMPDIR:-/tmp}
# (its path in STATE_DIR/datadir), tuned for speed, not durability: fsync=off.
# initdb and postgres refuse to run as root: as root they run as the `postgres` system user
# (created by Debian's postgresql package), which owns the cluster directory.
# Binaries: PG_BIN, else the newest /usr/lib/postgresql/*/bin, else PATH.
set -euo pipefail

usage() {
  echo "usage: $0 start|stop STATE_DIR" >&2
  exit 2
}
[ $# -eq 2 ] || usage
command="$1"
state_dir="$2"

find_bin() {
  if [ -n "${PG_BIN:-}" ]; then
    echo "$PG_BIN"
    return
  fi
  local newest=""
  for d in /usr/lib/postgresql/*/bin; do
    if [ -x "$d/initdb" ]; then newest="$d"; fi
  done
  if [ -n "$newest" ]; then
    echo "$newest"
  elif command -v initdb >/dev/null 2>&1; then
    dirname "$(command -v initdb)"
  else
    echo "postgres-test-server: no PostgreSQL server binaries (initdb); install the postgresql package" \
      "(scripts/install-deps.sh) or set PG_BIN" >&2
    exit 1
  fi
}

# Runs a command as the cluster's owner: ourselves, or `postgres` when we are root.
as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

stop_server() {
  [ -f "$state_dir/datadir" ] || return 0
  local data
  data="$(cat "$state_dir/datadir")"
  if [ -f "$data/cluster/postmaster.pid" ]; then
    as_owner "$bin/pg_ctl" stop -D "$data/cluster" -m immediate -w >/dev/null 2>&1 || true
  fi
  case "$data" in
    */slim-pgtest.*) rm -rf "$data" ;;  # only ever what we created
  esac
  rm -f "$state_dir/datadir" "$state_dir/url"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

bin="$(find_bin)"
mkdir -p "$state_dir"
state_dir="$(cd "$state_dir" && pwd)"

case "$command" in
  start)
    stop_server  # a server left behind by an interrupted run
    if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
      echo "postgres-test-server: running as root but there is no 'postgres' user to run the server as" >&2
      exit 1
    fi
    data="$(mktemp -d "${TMPDIR:-/tmp}/slim-pgtest.XXXXXX")"
    echo "$data" >"$state_dir/datadir"
    chmod 755 "$data"
    if [ "$(id -u)" -eq 0 ]; then chown postgres: "$data"; fi
    if ! as_owner "$bin/initdb" -D "$data/cluster" -U postgres --auth=trust -E UTF8 --no-sync \
      >"$data/initdb.log" 2>&1; then
      cat "$data/initdb.log" >&2
      echo "postgres-test-server: initdb failed" >&2
      exit 1
    fi
    # The port is free when chosen but could be taken before postgres binds it: retry.
    for attempt in 1 2 3 4 5; do
      port="$(free_port)"
      if as_owner "$bin/pg_ctl" start -D "$data/cluster" -w -t 60 -l "$data/postgres.log" \
        -o "-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories='$data' -c fsync=off \
            -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" >/dev/null; then
        echo "postgresql://postgres@127.0.0.1:$port/postgres" >"$state_dir/url"
        echo "postgres-test-server: listening on 127.0.0.1:$port (data in $data)"
        exit 0
      fi
      echo "postgres-test-server: start attempt $attempt on port $port failed" >&2
    done
    cat "$data/postgres.log" >&2 || true
    exit 1
    ;;
  stop)
    stop_server
    echo "postgres-test-server: stopped"
    ;;
  *)
    usage
    ;;
esac
