#!/usr/bin/env bash
# A private ZooKeeper server for myelin's tests and benchmark (standalone, or one member of an
# ensemble), from Debian's `zookeeper` package (integration/install-deps.sh), on 127.0.0.1 only.
#
#   integration/zookeeper.sh start    start it (if not running) and wait until it answers
#   integration/zookeeper.sh stop     stop it and delete its directory (data, config, log)
#   integration/zookeeper.sh kill     stop the server only (SIGKILL): its data stays, and
#                                     `start` brings it back with its sessions and nodes
#   integration/zookeeper.sh status   exit 0 if it answers
#
# It lives in $MYELIN_ZK_DIR (default /tmp/myelin-zookeeper) and listens on
# 127.0.0.1:$MYELIN_ZK_PORT (default 21810); the port is also written to $MYELIN_ZK_DIR/port.
# Its log is $MYELIN_ZK_DIR/zookeeper.log. With $MYELIN_ZK_OWNER (a process id) set, the server
# is killed when that process is gone (a test's private server outlives no aborted test).
# tickTime is 500 ms, so sessions may be as short as 1 s (tests expire registrations quickly)
# and as long as 60 s; the admin HTTP server is off.
#
# A member of an ensemble: set $MYELIN_ZK_MYID and $MYELIN_ZK_SERVERS (the
# `server.N=host:peer:election` lines, space-separated) for each member, and start the members
# together (`start` waits until the member serves, which needs a quorum).
set -euo pipefail
DIR=${MYELIN_ZK_DIR:-/tmp/myelin-zookeeper}
case "$DIR" in /|/tmp|/tmp/|"") echo "refusing MYELIN_ZK_DIR=$DIR" >&2; exit 2 ;; esac
PORT=${MYELIN_ZK_PORT:-$(cat "$DIR/port" 2>/dev/null || echo 21810)}
JAR=/usr/share/java/zookeeper.jar
# The jar's manifest names its dependencies; slf4j-simple logs to standard error (the log file).
CLASSPATH=$JAR:/usr/share/java/slf4j-simple.jar

answers() {
  # ZooKeeper's `srvr` four-letter word names the server's mode once it serves requests
  # (`ruok` says `imok` earlier, while a restarted server still loads its data).
  timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$PORT && printf srvr >&3 && cat <&3" 2>/dev/null | grep -q '^Mode: '
}

pid() { cat "$DIR/zookeeper.pid" 2>/dev/null || true; }

alive() { local p; p=$(pid); [ -n "$p" ] && kill -0 "$p" 2>/dev/null; }

start() {
  if alive && answers; then return 0; fi
  if [ ! -f "$JAR" ] || ! command -v java >/dev/null; then
    echo "ZooKeeper is not installed: run integration/install-deps.sh (Debian's zookeeper package)" >&2
    exit 1
  fi
  if alive; then kill -KILL "$(pid)" 2>/dev/null || true; fi
  mkdir -p "$DIR/data"
  echo "$PORT" >"$DIR/port"
  cat >"$DIR/zoo.cfg" <<EOF
tickTime=500
dataDir=$DIR/data
clientPort=$PORT
clientPortAddress=127.0.0.1
maxClientCnxns=0
# Registering clients in tests that restart the server ask for long sessions, to outlive it.
maxSessionTimeout=60000
admin.enableServer=false
4lw.commands.whitelist=ruok,srvr,stat,cons,mntr
EOF
  if [ -n "${MYELIN_ZK_SERVERS:-}" ]; then
    printf 'initLimit=10\nsyncLimit=5\n' >>"$DIR/zoo.cfg"
    printf '%s\n' $MYELIN_ZK_SERVERS >>"$DIR/zoo.cfg"
    echo "${MYELIN_ZK_MYID:?MYELIN_ZK_MYID is needed with MYELIN_ZK_SERVERS}" >"$DIR/data/myid"
  fi
  # Small heap, serial GC: the machine is shared.
  nohup java -Xmx256m -XX:+UseSerialGC -Dorg.slf4j.simpleLogger.defaultLogLevel=info \
    -cp "$CLASSPATH" org.apache.zookeeper.server.quorum.QuorumPeerMain "$DIR/zoo.cfg" \
    >>"$DIR/zookeeper.log" 2>&1 </dev/null &
  local zk=$!
  echo "$zk" >"$DIR/zookeeper.pid"
  if [ -n "${MYELIN_ZK_OWNER:-}" ]; then
    nohup bash -c "while kill -0 $MYELIN_ZK_OWNER && kill -0 $zk; do sleep 1; done 2>/dev/null; kill -KILL $zk 2>/dev/null" >/dev/null 2>&1 </dev/null &
  fi
  for _ in $(seq 1 150); do
    if answers; then return 0; fi
    if ! alive; then break; fi
    sleep 0.2
  done
  echo "ZooKeeper did not start on 127.0.0.1:$PORT; the end of $DIR/zookeeper.log:" >&2
  tail -n 30 "$DIR/zookeeper.log" >&2 || true
  exit 1
}

kill_server() {
  local p; p=$(pid)
  if [ -n "$p" ] && kill -0 "$p" 2>/dev/null; then
    kill -KILL "$p" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$DIR/zookeeper.pid"
}

case "${1:-start}" in
  start) start; echo "zookeeper: 127.0.0.1:$PORT ($DIR)" ;;
  stop) kill_server; rm -rf "$DIR" ;;
  kill) kill_server ;;
  status) alive && answers ;;
  *) echo "usage: $0 start|stop|kill|status" >&2; exit 2 ;;
esac
