#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the tests: its own data dir in a fresh temporary directory, a free
# port on 127.0.0.1, its socket inside that directory, no fsync. Nothing of it outlives `stop`.
#
# Usage:
#   eval "$(scripts/test-postgres.sh start)"   # exports I2V_TEST_DATABASE_URL and I2V_TEST_POSTGRES_DIR
#   scripts/test-postgres.sh stop [DIR]         # DIR defaults to $I2V_TEST_POSTGRES_DIR
#   scripts/test-postgres.sh run COMMAND...     # start, run COMMAND with the URL exported, always stop;
#                                               # exits with COMMAND's status
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# initdb and the server refuse to run as root; as root they run as this system user.
test_user="i2v-test"

log() { echo "test-postgres: $*" >&2; }

postgres_bin() {
  local bin
  bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
  if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
    "$here/install-system-deps.sh" test
    bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
  fi
  [ -n "$bin" ] && [ -x "$bin/initdb" ] || { log "no initdb under /usr/lib/postgresql/*/bin"; exit 1; }
  echo "$bin"
}

# Runs a PostgreSQL program as the cluster's owner.
as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u "$test_user" -- "$@"
  else
    "$@"
  fi
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

start() {
  local bin dir password port attempt
  bin="$(postgres_bin)"
  if [ "$(id -u)" -eq 0 ] && ! id -u "$test_user" >/dev/null 2>&1; then
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$test_user"
  fi
  if [ "$(id -u)" -eq 0 ]; then
    # Not $TMPDIR: the cluster's owner must be able to reach the directory, and root's may be private.
    dir="$(mktemp -d /tmp/i2v-postgres.XXXXXX)"
    chown "$test_user" "$dir"
  else
    dir="$(mktemp -d "${TMPDIR:-/tmp}/i2v-postgres.XXXXXX")"
  fi
  password="$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
  (umask 077 && printf '%s\n' "$password" >"$dir/password")
  if [ "$(id -u)" -eq 0 ]; then chown "$test_user" "$dir/password"; fi
  if ! as_owner "$bin/initdb" --pgdata="$dir/data" --username=postgres --pwfile="$dir/password" \
    --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 --no-locale --no-sync >"$dir/initdb.log" 2>&1; then
    cat "$dir/initdb.log" >&2
    rm -rf "$dir"
    log "initdb failed"
    exit 1
  fi
  rm -f "$dir/password"
  # A port picked free can be taken before the server binds it: try a few.
  for attempt in 1 2 3 4 5; do
    port="$(free_port)"
    if as_owner "$bin/pg_ctl" --pgdata="$dir/data" --log="$dir/postgres.log" --wait --timeout=60 \
      -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$dir -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" \
      start >/dev/null; then
      echo "$port" >"$dir/port"
      log "PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port, data in $dir"
      echo "export I2V_TEST_POSTGRES_DIR='$dir'"
      echo "export I2V_TEST_DATABASE_URL='postgres://postgres:$password@127.0.0.1:$port/postgres?sslmode=disable'"
      return 0
    fi
    log "could not start on port $port (attempt $attempt)"
  done
  cat "$dir/postgres.log" >&2 || true
  rm -rf "$dir"
  exit 1
}

stop() {
  local dir="${1:-${I2V_TEST_POSTGRES_DIR:-}}" bin
  [ -n "$dir" ] || { log "stop: no cluster directory given and I2V_TEST_POSTGRES_DIR is unset"; exit 2; }
  case "$dir" in
    */i2v-postgres.*) ;;
    *) log "stop: $dir is not a directory this script made"; exit 2 ;;
  esac
  [ -d "$dir" ] || return 0
  if [ -f "$dir/data/postmaster.pid" ]; then
    bin="$(postgres_bin)"
    # Immediate: the data is thrown away, so there is nothing to flush.
    as_owner "$bin/pg_ctl" --pgdata="$dir/data" --mode=immediate --wait stop >/dev/null 2>&1 || true
  fi
  rm -rf "$dir"
  log "stopped and removed $dir"
}

run() {
  [ $# -gt 0 ] || { log "run: no command given"; exit 2; }
  local exports
  # Assigned first so that a failed start stops here; `eval "$(start)"` alone would not.
  exports="$(start)"
  eval "$exports"
  trap 'stop "$I2V_TEST_POSTGRES_DIR"' EXIT
  # In the background so that a signal is handled at once (bash defers traps until a foreground command
  # ends); it is passed on, and the EXIT trap then stops the cluster.
  "$@" <&0 &
  local child=$! status=0
  trap 'kill -INT "$child" 2>/dev/null || true; wait "$child" || true; exit 130' INT
  trap 'kill -TERM "$child" 2>/dev/null || true; wait "$child" || true; exit 143' TERM
  wait "$child" || status=$?
  return "$status"
}

command="${1:-}"
[ $# -gt 0 ] && shift
case "$command" in
  start) start ;;
  stop) stop "$@" ;;
  run) run "$@" ;;
  *) echo "usage: $0 start | stop [DIR] | run COMMAND..." >&2; exit 2 ;;
esac
