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
mkdir -p "$dir"
# Three tiny HTTP backends (busybox httpd), each answering with its name.
for i in 1 2 3; do
  mkdir -p "$dir/www$i"
  echo "hello from demo-$i" > "$dir/www$i/index.html"
  busybox httpd -f -p "127.0.0.1:1808$i" -h "$dir/www$i" &
  echo $! > "$dir/backend$i.pid"
done
[ -e "$dir/backends.yaml" ] || cp "$root/config/demo-backends.yaml" "$dir/backends.yaml"

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
