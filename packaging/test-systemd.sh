#!/usr/bin/env bash
# The .deb under a real systemd: boot a Debian 12 system (systemd as PID 1, loopback only) with
# systemd-nspawn, install the package in it and use it as an operator would: start, discovery
# changes, reloads good and bad, the watchdog, stop, a bad config at start, the journal's
# priorities, upgrade, remove, purge, `systemd-analyze security`.
#
# The base system (debootstrap: minbase + systemd, dbus, haproxy, busybox, from the Debian
# mirror this machine's apt sources name) is built once and cached in $MYELIN_TEST_CACHE
# (default /var/cache/myelin-test); each run boots it with a throw-away overlay
# (--volatile=overlay), so the cache is never modified. Needs root.
# Usage: packaging/test-systemd.sh path/to/myelin_*.deb
set -euo pipefail
deb=$(realpath "${1:?usage: $0 myelin_VERSION_ARCH.deb}")
[ "$(id -u)" = 0 ] || { echo "test-systemd: needs root (debootstrap, systemd-nspawn)" >&2; exit 1; }

# Bump when the base's contents change: a new name makes a new cache entry.
base_name=bookworm-1
packages=systemd,systemd-sysv,dbus,haproxy,busybox
cache=${MYELIN_TEST_CACHE:-/var/cache/myelin-test}
base=$cache/$base_name
machine=myelin-test-$$

passed=0 failed=0
ok()   { passed=$((passed + 1)); echo "ok: $*"; }
fail() { failed=$((failed + 1)); echo "FAILED: $*" >&2; }
check() { local what=$1; shift; if "$@"; then ok "$what"; else fail "$what"; fi; }
t0=$(date +%s)
elapsed() { echo "$(( $(date +%s) - t0 )) s"; }

need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v systemd-nspawn >/dev/null || need+=(systemd-container)
command -v dpkg-deb >/dev/null || need+=(dpkg)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The Debian archive this machine's apt sources name (not the security archive), else Debian's.
mirror() {
  if [ -n "${MYELIN_TEST_MIRROR:-}" ]; then echo "$MYELIN_TEST_MIRROR"; return; fi
  local m
  m=$( { sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/*.sources 2>/dev/null
         sed -n 's/^deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\?\([^[:space:]]\+\)[[:space:]]\+bookworm[[:space:]].*/\2/p' \
           /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null
       } | tr ' ' '\n' | grep -v -e security -e '^$' | sed -n 1p)
  echo "${m:-http://deb.debian.org/debian}"
}

mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9   # one build of the base at a time; runs share it read-only
if [ ! -e "$base/.myelin-base-complete" ]; then
  m=$(mirror)
  echo "== building the base system $base from $m (cached for later runs)"
  rm -rf "$base.tmp"
  b0=$(date +%s)
  debootstrap --variant=minbase --include="$packages" bookworm "$base.tmp" "$m" >"$cache/debootstrap.log" 2>&1 \
    || { tail -20 "$cache/debootstrap.log" >&2; echo "test-systemd: debootstrap failed (log: $cache/debootstrap.log)" >&2; exit 1; }
  echo myelin-test >"$base.tmp/etc/hostname"
  # A booted copy makes its own machine id.
  : >"$base.tmp/etc/machine-id"
  rm -f "$base.tmp/var/lib/dbus/machine-id"
  touch "$base.tmp/.myelin-base-complete"
  mv "$base.tmp" "$base"
  echo "built the base in $(( $(date +%s) - b0 )) s"
fi
flock -u 9

work=$(mktemp -d /tmp/myelin-systemd.XXXXXX)
nspawn=
cleanup() {
  if [ -n "$nspawn" ] && kill -0 "$nspawn" 2>/dev/null; then
    [ -n "${leader:-}" ] && nsenter -t "$leader" -a systemctl poweroff >/dev/null 2>&1 || true
    for _ in $(seq 50); do kill -0 "$nspawn" 2>/dev/null || break; sleep 0.1; done
    kill "$nspawn" 2>/dev/null || true
    wait "$nspawn" 2>/dev/null || true
  fi
  if [ "$failed" != 0 ] || [ -n "${MYELIN_TEST_KEEP:-}" ]; then
    echo "test-systemd: logs kept in $work" >&2
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT

# The package, and its next version (same contents) for the upgrade.
cp "$deb" "$work/myelin.deb"
mkdir "$work/pkg"
dpkg-deb -R "$deb" "$work/pkg"
version=$(sed -n 's/^Version: //p' "$work/pkg/DEBIAN/control")
sed -i "s/^Version: .*/Version: ${version}+next/" "$work/pkg/DEBIAN/control"
dpkg-deb -b -Zgzip --root-owner-group "$work/pkg" "$work/myelin-next.deb" >/dev/null
rm -rf "$work/pkg"

echo "== boot $base (overlay, loopback only)"
systemd-nspawn -D "$base" --volatile=overlay -b --keep-unit --register=no --private-network \
  -M "$machine" --bind-ro="$work:/mnt/test" --console=pipe </dev/null >"$work/console.log" 2>&1 &
nspawn=$!
leader=
for _ in $(seq 100); do
  leader=$(ps -o pid=,comm= --ppid "$nspawn" 2>/dev/null | awk '$2 == "systemd" {print $1}' || true)
  [ -n "$leader" ] && break
  kill -0 "$nspawn" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$leader" ]; then
  cat "$work/console.log" >&2
  echo "test-systemd: systemd-nspawn did not boot" >&2; failed=1; exit 1
fi

# Run a command inside the booted system, with a clean environment.
ct() {
  nsenter -t "$leader" -a env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 SYSTEMD_PAGER= SYSTEMD_COLORS=0 "$@"
}
insh() { ct sh -c "$1"; }
# systemctl needs PID 1's socket, then waits for the boot to finish.
for _ in $(seq 300); do [ -S "/proc/$leader/root/run/systemd/private" ] && break; sleep 0.1; done
state=$(ct timeout 60 systemctl is-system-running --wait || true)
# `degraded`: some unit of the base failed on this host; not myelin's business, but shown.
[ "$state" = degraded ] && ct systemctl --failed --no-pager >&2
check "systemd is PID 1 and the system is up (is-system-running: $state, $(elapsed))" \
  bash -c "[ '$state' = running ] || [ '$state' = degraded ]"
check "the network is loopback only" [ "$(ct ls /sys/class/net)" = lo ]

# What a user sees of the unit.
prop() { ct systemctl show -P "$1" myelin; }
mainpid() { prop MainPID; }
# Wait up to $1 seconds for a command to succeed.
within() { local s=$1; shift; local end=$(( $(date +%s%N) / 1000000 + s * 1000 )); while :; do
  if "$@" >/dev/null 2>&1; then return 0; fi
  [ $(( $(date +%s%N) / 1000000 )) -lt "$end" ] || return 1; sleep 0.1; done; }
# The body HAProxy gives on 127.0.0.1:$1: one HTTP/1.0 request through bash's /dev/tcp (3 s at
# most; busybox's wget crashes with -T here).
get() {
  ct timeout 3 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1 && printf 'GET / HTTP/1.0\r\nHost: t\r\n\r\n' >&3 && cat <&3" 2>/dev/null \
    | tail -n 1 | tr -d '\r'
}
routes() { [ "$(get "$1")" = "$2" ]; }
# Every one of the named backends answers through port $1 within a bounded number of requests.
serves() { local port=$1; shift; local seen=" " body; for _ in $(seq 30); do
  body=$(get "$port" || true); [ -n "$body" ] && seen="$seen$body "
  local all=1; for b in "$@"; do case "$seen" in *" $b "*) ;; *) all=0 ;; esac; done
  [ "$all" = 1 ] && return 0; done; return 1; }
journal() { ct journalctl --no-pager -o cat -u myelin "$@"; }
cursor() { ct journalctl --no-pager -n 0 --show-cursor | sed -n 's/^-- cursor: //p'; }
# For checks run through `bash -c` and `within`.
export leader
export -f ct insh prop mainpid get routes serves journal

echo "== backends: busybox httpd on 127.0.0.1:18081..18084 (b1..b4)"
for i in 1 2 3 4; do
  insh "mkdir -p /srv/b$i && echo b$i >/srv/b$i/index.html"
  ct systemd-run -q --unit="backend$i" busybox httpd -f -p "127.0.0.1:1808$i" -h "/srv/b$i"
done
check "the backends answer" within 5 routes 18084 b4

echo "== install"
check "dpkg -i" ct dpkg -i /mnt/test/myelin.deb
check "the unit is enabled" [ "$(ct systemctl is-enabled myelin)" = enabled ]
check "the unit is not started by the install" [ "$(prop ActiveState)" = inactive ]
ct systemctl start myelin || true
check "unconfigured, a start is skipped by ExecCondition (Result=$(prop Result))" \
  bash -c "[ '$(prop Result)' = exec-condition ] && [ '$(prop ActiveState)' = inactive ]"

echo "== configure a file-discovery service and start"
cat >"$work/web.yaml" <<'YAML'
- {name: b1, host: 127.0.0.1, port: 18081}
- {name: b2, host: 127.0.0.1, port: 18082}
YAML
ct cp /mnt/test/web.yaml /etc/myelin/web-backends.yaml
# The packaged config with one service, file_output on: the edit a user makes.
web='  web:\n    discovery: {method: file, path: /etc/myelin/web-backends.yaml}\n    haproxy: {port: 18080, bind_address: 127.0.0.1}'
insh "sed -i 's|^services: {}\$|services:\n$web|; s|^# file_output:\$|file_output:|; s|^#   output_directory:|  output_directory:|' /etc/myelin/myelin.yaml"
insh "cp /etc/myelin/myelin.yaml /root/good.yaml"
check "the edited config is valid (myelin check)" ct myelin check -c /etc/myelin/myelin.yaml
# The race READY=1 must not lose: the first connection right after `systemctl start` returns.
if ct systemctl start myelin; then ok "systemctl start myelin"; else fail "systemctl start myelin"; ct systemctl status myelin --no-pager >&2 || true; fi
first=$(get 18080 || true)
check "HAProxy routes as soon as systemctl start returns (READY=1 after HAProxy runs the config; got '${first}')" \
  bash -c "[ '$first' = b1 ] || [ '$first' = b2 ]"
check "active" [ "$(prop ActiveState)" = active ]
check "READY=1 and STATUS= came through sd_notify (StatusText: $(prop StatusText))" bash -c "[ '$(prop Type)' = notify ] && [ -n '$(prop StatusText)' ]"
check "both backends served" serves 18080 b1 b2
pid=$(mainpid)

echo "== a backend added to the file is served"
insh "echo '- {name: b3, host: 127.0.0.1, port: 18083}' >>/etc/myelin/web-backends.yaml"
check "b3 served within 5 s" within 5 serves 18080 b3

echo "== file_output and the state directory"
check "file_output wrote /var/lib/myelin/services/web.json" within 5 ct grep -q '"b3"' /var/lib/myelin/services/web.json
check "/var/lib/myelin is $(ct stat -c %a /var/lib/myelin) (0755: file_output there is readable by all)" [ "$(ct stat -c %a /var/lib/myelin)" = 755 ]
check "a non-root user reads file_output" ct setpriv --reuid=65534 --regid=65534 --clear-groups test -r /var/lib/myelin/services/web.json

echo "== systemctl reload: a valid config"
api='  api:\n    discovery: {method: file, path: /etc/myelin/web-backends.yaml}\n    haproxy: {port: 18090, bind_address: 127.0.0.1}'
insh "sed -i 's|^services:\$|services:\n$api|' /etc/myelin/myelin.yaml"
if ct systemctl reload myelin >"$work/out" 2>&1; then ok "systemctl reload (valid config) succeeds"; else cat "$work/out" >&2; fail "systemctl reload (valid config) succeeds"; fi
check "same main PID after the reload" [ "$(mainpid)" = "$pid" ]
check "the new service is served" within 5 serves 18090 b1 b2 b3
insh "cp /etc/myelin/myelin.yaml /root/good2.yaml"

echo "== systemctl reload: a broken config"
cur=$(cursor)
insh "sed -i 's|haproxy: {port: 18090, bind_address: 127.0.0.1}|haproxy: {port: 18090, bind_adress: 127.0.0.1}|' /etc/myelin/myelin.yaml"
if ct systemctl reload myelin >"$work/out" 2>&1; then fail "systemctl reload (broken config) fails"; else ok "systemctl reload (broken config) fails"; fi
check "the journal says why (bind_adress)" bash -c "journal --after-cursor='$cur' | grep -q bind_adress"
check "systemctl status says why" bash -c "ct systemctl status myelin --no-pager -n 20 | grep -q bind_adress"
check "still active, same PID" bash -c "[ '$(prop ActiveState)' = active ] && [ '$(mainpid)' = '$pid' ]"
check "the old config is kept: both services served" bash -c "serves 18090 b1 && serves 18080 b2"

echo "== a config HAProxy rejects"
insh "cp /root/good2.yaml /etc/myelin/myelin.yaml && sed -i 's|^  defaults:\$|  defaults:\n    - nonsense-keyword-for-the-test|' /etc/myelin/myelin.yaml"
ct myelin check -c /etc/myelin/myelin.yaml >"$work/out" 2>&1 || true
check "myelin check shows HAProxy's reason" grep -q "nonsense-keyword-for-the-test" "$work/out"
cur=$(cursor)
if ct systemctl reload myelin >"$work/out" 2>&1; then fail "systemctl reload (HAProxy rejects) fails"; else ok "systemctl reload (HAProxy rejects) fails"; fi
check "the journal shows HAProxy's reason" bash -c "journal --after-cursor='$cur' | grep -q 'unknown keyword.*nonsense-keyword-for-the-test'"
# Past the ExecReload check (SIGHUP sent directly): the daemon's own haproxy -c refuses it.
cur=$(cursor)
ct systemctl kill -s HUP --kill-whom=main myelin
check "a rejected apply names HAProxy's reason in the journal" \
  within 5 bash -c "journal --after-cursor='$cur' | grep -q 'haproxy rejected.*unknown keyword.*nonsense-keyword-for-the-test'"
check "... at priority err" bash -c "journal -p err --after-cursor='$cur' | grep -q 'haproxy rejected.*unknown keyword.*nonsense-keyword-for-the-test'"
check "... and in myelin status" bash -c "ct myelin status --json | grep -q 'unknown keyword.*nonsense-keyword-for-the-test'"
check "HAProxy still serves the config in force" serves 18090 b1
insh "cp /root/good2.yaml /etc/myelin/myelin.yaml"
check "back to a valid config: reload succeeds" ct systemctl reload myelin

echo "== warnings reach the journal as warnings"
cur=$(cursor)
insh "echo '- {name: bad, host: 127.0.0.1, port: 99999}' >>/etc/myelin/web-backends.yaml"
check "journalctl -p warning shows the rejected record" \
  within 5 bash -c "journal -p warning --after-cursor='$cur' | grep -q 'Rejected a discovery record'"
check "journalctl -p warning does not show info lines" bash -c "! journal -p warning | grep -q 'SIGHUP: reloading the configuration'"

echo "== the watchdog restarts a stopped process"
insh "mkdir -p /run/systemd/system/myelin.service.d && printf '[Service]\nWatchdogSec=3s\n' >/run/systemd/system/myelin.service.d/watchdog.conf"
ct systemctl daemon-reload
ct systemctl restart myelin
pid=$(mainpid)
restarts=$(prop NRestarts)
ct busybox kill -STOP "$pid"   # procps (kill) is not installed
check "restarted after a watchdog timeout (new PID, active)" \
  within 20 bash -c "p=\$(mainpid); [ \"\$p\" != 0 ] && [ \"\$p\" != $pid ] && [ \"\$(prop ActiveState)\" = active ]"
check "NRestarts went up ($restarts -> $(prop NRestarts))" [ "$(prop NRestarts)" -gt "$restarts" ]
check "the journal says watchdog timeout" bash -c "journal | grep -qi 'watchdog timeout'"
ct rm -rf /run/systemd/system/myelin.service.d
ct systemctl daemon-reload

echo "== systemctl stop"
if ct systemctl stop myelin; then ok "systemctl stop"; else fail "systemctl stop"; fi
check "stopped cleanly (inactive, Result=$(prop Result))" bash -c "[ '$(prop ActiveState)' = inactive ] && [ '$(prop Result)' = success ]"
check "HAProxy keeps serving" serves 18080 b1 b2 b3

echo "== a bad config at start ends failed"
insh "sed -i 's|^services:\$|services:\n  broken: {discovery: {method: file}}|' /etc/myelin/myelin.yaml"
ct systemctl start myelin >/dev/null 2>&1 && fail "systemctl start (bad config) fails" || ok "systemctl start (bad config) fails"
check "the unit ends failed, not restarting (state $(prop ActiveState)/$(prop SubState))" \
  within 8 bash -c "[ \"\$(ct systemctl is-failed myelin)\" = failed ]"
sleep 1
check "still failed a while later, no restart ($(prop ActiveState)/$(prop SubState), NRestarts=$(prop NRestarts))" \
  bash -c "[ '$(prop ActiveState)' = failed ] && [ '$(prop NRestarts)' = 0 ]"
check "systemctl --failed lists it" bash -c "ct systemctl --failed --no-legend | grep -q myelin"
check "the journal names the problem at priority err" bash -c "journal -p err | grep -q 'broken'"
insh "cp /root/good2.yaml /etc/myelin/myelin.yaml"
check "recovery as documented: fix, systemctl start" ct systemctl start myelin
check "active again" [ "$(prop ActiveState)" = active ]

echo "== systemd-analyze security"
exposure=$(ct systemd-analyze security myelin --no-pager | sed -n 's/.*Overall exposure level for myelin.service: \([0-9.]*\).*/\1/p')
check "exposure $exposure <= 2.1" awk -v e="$exposure" 'BEGIN { exit !(e != "" && e <= 2.1) }'

echo "== upgrade keeps the edited config"
edited=$(ct sha256sum /etc/myelin/myelin.yaml)
pid=$(mainpid)
check "dpkg -i the next version" ct dpkg -i --force-confdef --force-confold /mnt/test/myelin-next.deb
check "upgraded" [ "$(ct dpkg-query -W -f='${Version}' myelin)" = "${version}+next" ]
check "the edited config is kept" [ "$(ct sha256sum /etc/myelin/myelin.yaml)" = "$edited" ]
check "myelin was restarted on the upgrade (PID $pid -> $(mainpid))" bash -c "[ '$(prop ActiveState)' = active ] && [ '$(mainpid)' != '$pid' ]"
check "the state directory is kept" ct test -f /var/lib/myelin/services/web.json

echo "== remove keeps the config, purge removes it"
check "dpkg -r" ct dpkg -r myelin
check "myelin is stopped" [ "$(prop ActiveState)" = inactive ]
check "the config stays" [ "$(ct sha256sum /etc/myelin/myelin.yaml)" = "$edited" ]
check "HAProxy keeps serving" serves 18080 b1
check "dpkg --purge" ct dpkg --purge myelin
check "the config is gone" ct test ! -e /etc/myelin/myelin.yaml
check "/var/lib/myelin is gone" ct test ! -e /var/lib/myelin

echo "test-systemd: $passed passed, $failed failed in $(elapsed)"
[ "$failed" = 0 ]
