#!/usr/bin/env bash
# The etcd tests' three-member cluster on 127.0.0.1 (Debian's etcd-server, installed by
# install-deps.sh), data under $MYELIN_ETCD_DIR (default /tmp/myelin-etcd).
#
#   etcd-cluster.sh start   start the members that are not running (a fresh cluster when none
#                           is), wait until all are healthy; idempotent
#   etcd-cluster.sh restart start the members that are not running with the data they have
#                           (for tests that stopped members); idempotent
#   etcd-cluster.sh stop    stop every member and remove the data
#
# Client ports 23791-23793, peer ports 23801-23803 (with $MYELIN_ETCD_PORT_BASE=N: N+1..N+3 and
# N+11..N+13, for a second cluster beside the first): below Linux's ephemeral range
# (32768-60999), from which the kernel and Docker hand out ports, and below the 24000-32767 the
# tests' free_port() picks from, so neither can take them. The client endpoints are
# written to $MYELIN_ETCD_DIR/endpoints (one per line) for the tests to read.
set -euo pipefail
dir=${MYELIN_ETCD_DIR:-/tmp/myelin-etcd}
members=(1 2 3)
base=${MYELIN_ETCD_PORT_BASE:-23790}
client_port() { echo $((base + $1)); }
peer_port() { echo $((base + 10 + $1)); }

# Member $1 runs: its pid is an etcd process that is not a zombie (a killed member stays one
# until init reaps it).
running() {
  local pid
  [ -f "$dir/m$1.pid" ] || return 1
  pid=$(cat "$dir/m$1.pid")
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = etcd ] && ! grep -q ') Z ' "/proc/$pid/stat" 2>/dev/null
}

start_member() {
  local n=$1 cluster="" m
  for m in "${members[@]}"; do cluster+="${cluster:+,}m$m=http://127.0.0.1:$(peer_port "$m")"; done
  # Short heartbeat and election timeout: a killed leader is replaced in about a second.
  setsid etcd --name "m$n" --data-dir "$dir/m$n.data" \
    --listen-client-urls "http://127.0.0.1:$(client_port "$n")" \
    --advertise-client-urls "http://127.0.0.1:$(client_port "$n")" \
    --listen-peer-urls "http://127.0.0.1:$(peer_port "$n")" \
    --initial-advertise-peer-urls "http://127.0.0.1:$(peer_port "$n")" \
    --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token myelin-test \
    --heartbeat-interval 50 --election-timeout 500 --logger zap \
    </dev/null >>"$dir/m$n.log" 2>&1 &
  echo $! >"$dir/m$n.pid"
}

endpoints() {
  local m
  for m in "${members[@]}"; do echo "http://127.0.0.1:$(client_port "$m")"; done
}

case "${1:-}" in
  start | restart)
    command -v etcd >/dev/null || { echo "etcd is missing: run integration/install-deps.sh" >&2; exit 1; }
    any=
    for m in "${members[@]}"; do if running "$m"; then any=1; fi; done
    if [ -z "$any" ] && [ "$1" = start ]; then
      # No member runs: whatever is left from before is stale.
      rm -rf "$dir"
    fi
    mkdir -p "$dir"
    for m in "${members[@]}"; do running "$m" || start_member "$m"; done
    endpoints >"$dir/endpoints"
    eps=$(endpoints | paste -sd,)
    deadline=$((SECONDS + 30))
    while [ $SECONDS -lt $deadline ]; do
      # Every member answers, and one is the leader (`endpoint health` would fail while a test
      # has authentication on).
      if status=$(ETCDCTL_API=3 etcdctl --endpoints "$eps" --command-timeout=1s endpoint status 2>/dev/null) &&
        [ "$(grep -c . <<<"$status")" = "${#members[@]}" ] && grep -q ', true, false, ' <<<"$status"; then
        echo "etcd cluster up: $eps"
        exit 0
      fi
      sleep 0.2
    done
    echo "etcd cluster did not become healthy; logs in $dir:" >&2
    tail -n 5 "$dir"/m*.log >&2 || true
    exit 1
    ;;
  stop)
    for m in "${members[@]}"; do
      if running "$m"; then kill "$(cat "$dir/m$m.pid")" 2>/dev/null || true; fi
    done
    for m in "${members[@]}"; do
      for _ in $(seq 1 50); do running "$m" || break; sleep 0.1; done
      if running "$m"; then kill -9 "$(cat "$dir/m$m.pid")" 2>/dev/null || true; fi
    done
    rm -rf "$dir"
    ;;
  *)
    echo "usage: $0 start|restart|stop" >&2
    exit 2
    ;;
esac
