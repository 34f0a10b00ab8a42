#!/usr/bin/env bash
# A private Docker engine for myelin's tests and benchmark, and the test image `local/nodeapp`.
#
#   integration/docker-engine.sh start    start it (if not running) and build the image (if missing)
#   integration/docker-engine.sh stop     stop it and remove its containers' state
#   integration/docker-engine.sh daemon-stop  stop the daemon only: containers keep running (live-restore)
#   integration/docker-engine.sh status   exit 0 if it answers
#
# It lives in $MYELIN_DOCKER_DIR (default /tmp/myelin-docker) and listens on the unix socket
# $MYELIN_DOCKER_DIR/docker.sock, and with TLS (client certificates required) on
# 127.0.0.1:$MYELIN_DOCKER_TLS_PORT (default 23760); the client's ca.pem, cert.pem and key.pem
# are in $MYELIN_DOCKER_DIR/tls/client. vfs storage (works on any filesystem), no iptables
# (published ports go through Docker's userland proxy), ports published on 127.0.0.1 by
# default, and live-restore so that containers keep serving while the daemon is down.
# Engines side by side (two "hosts"): give each its own $MYELIN_DOCKER_DIR, TLS port and bridge:
# $MYELIN_DOCKER_BRIDGE names a Linux bridge the script creates with the address
# $MYELIN_DOCKER_BRIDGE_CIDR (default 198.18.1.1/24, a benchmarking range) instead of docker0.
# Needs root, and Debian's docker.io and busybox-static (integration/install-deps.sh).
set -euo pipefail
DIR=${MYELIN_DOCKER_DIR:-/tmp/myelin-docker}
SOCK=$DIR/docker.sock
TLS_PORT=${MYELIN_DOCKER_TLS_PORT:-23760}
TLS=$DIR/tls
HERE=$(cd "$(dirname "$0")" && pwd)
# Docker's own client from the same package as the daemon.
if [ -x /usr/bin/docker ]; then DOCKER=/usr/bin/docker; else DOCKER=docker; fi
docker() { "$DOCKER" -H "unix://$SOCK" "$@"; }

BRIDGE=${MYELIN_DOCKER_BRIDGE:-}
BRIDGE_CIDR=${MYELIN_DOCKER_BRIDGE_CIDR:-198.18.1.1/24}

running() { [ -S "$SOCK" ] && docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

# A CA, a server certificate for 127.0.0.1 and a client certificate, made once.
make_certs() {
  if [ -f "$TLS/client/key.pem" ]; then return 0; fi
  rm -rf "$TLS"; mkdir -p "$TLS/client"
  (
    cd "$TLS"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=myelin test CA" -keyout ca-key.pem -out ca.pem 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout server-key.pem -out server.csr 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >server.ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 3650 -extfile server.ext -out server-cert.pem 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=myelin" -keyout client/key.pem -out client.csr 2>/dev/null
    printf 'extendedKeyUsage=clientAuth\n' >client.ext
    openssl x509 -req -in client.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 3650 -extfile client.ext -out client/cert.pem 2>/dev/null
    cp ca.pem client/ca.pem
  )
}

start_daemon() {
  mkdir -p "$DIR"
  if running; then return 0; fi
  make_certs
  # A daemon that died uncleanly leaves its pid file; dockerd refuses to start over it.
  if [ -f "$DIR/docker.pid" ] && ! kill -0 "$(cat "$DIR/docker.pid")" 2>/dev/null; then rm -f "$DIR/docker.pid"; fi
  local bridge_args=()
  if [ -n "$BRIDGE" ]; then
    if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
      ip link add name "$BRIDGE" type bridge
      ip addr add "$BRIDGE_CIDR" dev "$BRIDGE"
    fi
    ip link set "$BRIDGE" up
    bridge_args=(--bridge "$BRIDGE")
  fi
  nohup dockerd "${bridge_args[@]}" \
    --storage-driver=vfs --iptables=false --ip=127.0.0.1 --live-restore \
    --data-root "$DIR/data" --exec-root "$DIR/exec" --pidfile "$DIR/docker.pid" \
    --tlsverify --tlscacert "$TLS/ca.pem" --tlscert "$TLS/server-cert.pem" --tlskey "$TLS/server-key.pem" \
    -H "unix://$SOCK" -H "tcp://127.0.0.1:$TLS_PORT" >>"$DIR/dockerd.log" 2>&1 </dev/null &
  for _ in $(seq 1 150); do
    if running; then return 0; fi
    sleep 0.2
  done
  echo "dockerd did not start; the end of $DIR/dockerd.log:" >&2
  tail -n 30 "$DIR/dockerd.log" >&2
  exit 1
}

stop_daemon() {
  if [ -f "$DIR/docker.pid" ]; then
    local pid; pid=$(cat "$DIR/docker.pid")
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid"
      for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    fi
  fi
}

build_image() {
  # Rebuilt whenever the Dockerfile changes (its hash is an image label).
  local sum; sum=$(sha256sum "$HERE/nodeapp/Dockerfile" | cut -c1-16)
  if [ "$(docker image inspect -f '{{index .Config.Labels "myelin.dockerfile"}}' local/nodeapp 2>/dev/null)" = "$sum" ]; then return 0; fi
  local ctx; ctx=$(mktemp -d)
  cp "$(command -v busybox)" "$ctx/busybox"
  cp "$HERE/nodeapp/Dockerfile" "$ctx/Dockerfile"
  DOCKER_BUILDKIT=0 docker build -q --label "myelin.dockerfile=$sum" -t local/nodeapp "$ctx" >/dev/null
  rm -rf "$ctx"
}

case "${1:-start}" in
  start) start_daemon; build_image; echo "docker engine: unix://$SOCK ($(docker version --format '{{.Server.Version}}'))" ;;
  stop)
    if running; then docker ps -aq | xargs -r "$DOCKER" -H "unix://$SOCK" rm -f >/dev/null 2>&1 || true; fi
    stop_daemon
    if [ -n "$BRIDGE" ]; then ip link del "$BRIDGE" 2>/dev/null || true; fi ;;
  daemon-stop) stop_daemon ;;
  status) running ;;
  *) echo "usage: $0 start|stop|daemon-stop|status" >&2; exit 2 ;;
esac
