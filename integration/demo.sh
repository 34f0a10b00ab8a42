#!/usr/bin/env bash
# `make demo`: HAProxy + myelin on a built-in file-discovery example, on 127.0.0.1 only.
#   integration/demo.sh        start (myelin in the foreground; Ctrl-C stops it, HAProxy stays)
#   integration/demo.sh stop   stop HAProxy and the demo backends
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
export MYELIN_DEMO_DIR=${MYELIN_DEMO_DIR:-/tmp/myelin-demo}
dir=$MYELIN_DEMO_DIR

stop() {
  for f in "$dir"/*.pid; do
    [ -e "$f" ] || continue
    kill "$(cat "$f")" 2>/dev/null || true
    rm -f "$f"
  done
  # Also what an earlier demo left behind without its pid files (e.g. its directory was removed).
  pkill -f -- "busybox httpd -f -p 127.0.0.1:1808[1-3] -h $dir/www" 2>/dev/null || true
  pkill -f -- "haproxy -W -D -f $dir/haproxy.cfg" 2>/dev/null || true
  sleep 0.2
}

# The demo's ports must be free: say who holds one rather than failing later in a confusing way.
check_ports() {
  for port in 18080 18081 18082 18083; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "make demo: 127.0.0.1:$port is already in use; stop what listens there (ss -ltnp | grep $port) and try again" >&2
      exit 1
    fi
  done
}

if [ "${1:-}" = stop ]; then
  stop
  echo "demo stopped"
  exit 0
fi

"$root/integration/install-deps.sh"
(cd "$root" && cargo build -q -p myelin)
bin="$root/target/debug/myelin"

stop
check_ports
mkdir -p "$dir"
# Three tiny HTTP backends (busybox httpd), each answering with its name.
for i in 1 2 3; do
  mkdir -p "$dir/www$i"
  echo "hello from demo-$i" > "$dir/www$i/index.html"
  busybox httpd -f -p "127.0.0.1:1808$i" -h "$dir/www$i" &
  echo $! > "$dir/backend$i.pid"
done
[ -e "$dir/backends.yaml" ] || cp "$root/config/demo-backends.yaml" "$dir/backends.yaml"

# An empty server-state file (format version only), so HAProxy's first start has one to load.
[ -e "$dir/haproxy.cfg.state" ] || echo 1 > "$dir/haproxy.cfg.state"
"$bin" check -c "$root/config/demo.yaml"
"$bin" render -c "$root/config/demo.yaml" > "$dir/haproxy.cfg"
haproxy -W -D -f "$dir/haproxy.cfg" -p "$dir/haproxy.pid" -S "$dir/master.sock"

cat <<TXT

  HAProxy is routing 127.0.0.1:18080 to the backends in $dir/backends.yaml.
    curl http://127.0.0.1:18080/        (run it a few times: the backends take turns)
  Edit $dir/backends.yaml (uncomment demo-3, remove demo-1, ...) and curl again:
  myelin changes HAProxy's servers through its runtime API (no reload), keeps
  $dir/haproxy.cfg in step, and never needs a restart itself.
  Ctrl-C stops myelin; HAProxy keeps serving the last config. \`make demo-stop\` stops the rest.

TXT
exec "$bin" run -c "$root/config/demo.yaml"
