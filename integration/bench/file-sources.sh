#!/bin/sh
# `make bench`: idle CPU of `myelin run` with N file services whose files share one directory, and whether
# they all sync. Usage: integration/bench/file-sources.sh MYELIN_BIN [N] [SECONDS]
# Runs on loopback only, without HAProxy (`do_reloads: false`, `do_checks: false`: what is timed
# is the source, the render and the write); prints one line of figures.
set -eu
bin=$1; n=${2:-100}; secs=${3:-30}
dir=$(mktemp -d); trap 'kill $pid 2>/dev/null; rm -rf "$dir"' EXIT
mkdir "$dir/files"
admin=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
{
  echo "services:"
  i=0
  while [ $i -lt $n ]; do
    echo "- {host: 127.0.0.1, port: $((20000 + i))}" > "$dir/files/svc$i.yaml"
    echo "  svc$i: {discovery: {method: file, path: files/svc$i.yaml}, haproxy: {port: $((30000 + i)), bind_address: 127.0.0.1}}"
    i=$((i + 1))
  done
  echo "haproxy: {config_file_path: $dir/haproxy.cfg, do_reloads: false, do_checks: false}"
  echo "admin: {bind: $admin}"
} > "$dir/myelin.yaml"
MYELIN_LOG=warn "$bin" run -c "$dir/myelin.yaml" > "$dir/log" 2>&1 &
pid=$!
ready=no
for _ in $(seq 100); do
  if curl -sf "http://127.0.0.1:$admin/ready" >/dev/null 2>&1; then ready=yes; break; fi
  sleep 0.1
done
sleep 2
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
t0=$(ticks); sleep "$secs"; t1=$(ticks)
hz=$(getconf CLK_TCK)
# Then 10 changes to one file, each timed from the write to haproxy.cfg carrying it.
lat=$(python3 - "$dir" <<'PY'
import os, sys, time, statistics
d = sys.argv[1]
out = []
for k in range(10):
    port = 40000 + k
    tmp = f"{d}/files/.svc7.tmp"
    with open(tmp, "w") as f:
        f.write(f"- {{host: 127.0.0.1, port: {port}}}\n")
    t0 = time.monotonic()
    os.rename(tmp, f"{d}/files/svc7.yaml")
    while time.monotonic() - t0 < 5:
        try:
            if f"127.0.0.1:{port}" in open(f"{d}/haproxy.cfg").read():
                break
        except FileNotFoundError:
            pass
        time.sleep(0.002)
    out.append((time.monotonic() - t0) * 1000)
    time.sleep(0.3)
print(f"change_ms_median={statistics.median(out):.0f} change_ms_worst={max(out):.0f}")
PY
)
inotify=$(ls -l /proc/$pid/fd | grep -c inotify || true)
threads=$(ls /proc/$pid/task | wc -l)
echo "services=$n ready=$ready idle_cpu_s=$(echo "scale=2; ($t1 - $t0) / $hz" | bc) over=${secs}s core_pct=$(echo "scale=1; 100 * ($t1 - $t0) / $hz / $secs" | bc) inotify_fds=$inotify threads=$threads errors=$(grep -c -i 'error\|cannot\|too many' "$dir/log" || true) $lat"
[ "$ready" = yes ] || { echo "not every service synced within 10 s" >&2; exit 1; }
