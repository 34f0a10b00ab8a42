#!/usr/bin/env bash
# The .deb as a user meets it, on this machine (as root): install, look at what it put where,
# run it, upgrade over a user-edited config, remove, purge. Then lintian.
# Usage: packaging/test-deb.sh path/to/myelin_*.deb
set -euo pipefail
deb=${1:?usage: $0 myelin_VERSION_ARCH.deb}
[ "$(id -u)" = 0 ] || { echo "test-deb: needs root (dpkg -i)" >&2; exit 1; }

passed=0 failed=0
ok()   { passed=$((passed + 1)); echo "ok: $*"; }
fail() { failed=$((failed + 1)); echo "FAILED: $*" >&2; }
check() { local what=$1; shift; if "$@"; then ok "$what"; else fail "$what"; fi; }

need=()
command -v lintian >/dev/null || need+=(lintian)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v haproxy >/dev/null || need+=(haproxy)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

status() { dpkg-query -W -f='${db:Status-Abbrev}' myelin 2>/dev/null | tr -d ' ' || true; }
# A leftover from an earlier run goes first.
if [ -n "$(status)" ]; then dpkg --purge myelin >/dev/null; fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "== install"
dpkg -i "$deb"
check "installed" [ "$(status)" = ii ]
for f in /usr/bin/myelin /etc/myelin/myelin.yaml /usr/lib/systemd/system/myelin.service \
         /usr/share/man/man1/myelin.1.gz /usr/share/doc/myelin/copyright /usr/share/doc/myelin/changelog.Debian.gz \
         /usr/share/doc/myelin/configuration.md /usr/share/doc/myelin/operations.md \
         /usr/share/doc/myelin/migrating-from-synapse.md /usr/share/doc/myelin/examples/synapse.json.conf; do
  check "ships $f" [ -s "$f" ]
done
check "the config is a conffile" grep -q '^ /etc/myelin/myelin.yaml ' <(dpkg-query -W -f='${Conffiles}\n' myelin)
version=$(dpkg-query -W -f='${Version}' myelin)
check "myelin --version says ${version%-*}" [ "$(myelin --version)" = "myelin ${version%-*}" ]
check "the man page is myelin(1)" grep -q '^\.TH myelin 1' <(zcat /usr/share/man/man1/myelin.1.gz)
check "the man page documents run, check and status" bash -c 'zcat /usr/share/man/man1/myelin.1.gz | grep -q "myelin\\\\-status"'
check "myelin check accepts the shipped config" myelin check -c /etc/myelin/myelin.yaml
check "the examples load: synapse.json.conf" bash -c 'myelin render -c /usr/share/doc/myelin/examples/synapse.json.conf --timeout 0.1 2>/dev/null | grep -q "frontend nodesrv"'
check "the unit is enabled" [ -L /etc/systemd/system/multi-user.target.wants/myelin.service ]
check "the unit is not started while the config is unedited (ExecCondition skips)" bash -c '! myelin configured -c /etc/myelin/myelin.yaml 2>/dev/null'
if systemd-analyze verify /usr/lib/systemd/system/myelin.service >"$work/verify" 2>&1; then
  ok "systemd-analyze verify myelin.service"
else
  # Units it names that this machine lacks (haproxy.service, docker.service) are not errors.
  if grep -v -e 'haproxy.service' -e 'docker.service' "$work/verify" | grep -q .; then
    cat "$work/verify" >&2; fail "systemd-analyze verify myelin.service"
  else
    ok "systemd-analyze verify myelin.service (only units absent here reported)"
  fi
fi
check "the unit is Type=notify, its reload checks the config first" bash -c 'grep -q "^Type=notify" /usr/lib/systemd/system/myelin.service && grep -q "^ExecReload=/usr/bin/myelin check -c /etc/myelin/myelin.yaml" /usr/lib/systemd/system/myelin.service'

echo "== configure, then upgrade: the user's edit stays"
cat > /etc/myelin/web-backends.yaml <<'YAML'
- {name: w1, host: 127.0.0.1, port: 18081}
YAML
sed -i 's/^services: {}$/services:\n  web:\n    discovery: {method: file, path: \/etc\/myelin\/web-backends.yaml}\n    haproxy: {port: 18080, bind_address: 127.0.0.1}/' /etc/myelin/myelin.yaml
check "the edited config is a configured one" myelin configured -c /etc/myelin/myelin.yaml
check "the edited config is valid" myelin check -c /etc/myelin/myelin.yaml
edited=$(sha256sum /etc/myelin/myelin.yaml)
# The next version of the same package.
mkdir "$work/pkg"
dpkg-deb -R "$deb" "$work/pkg"
sed -i "s/^Version: .*/Version: ${version}+next/" "$work/pkg/DEBIAN/control"
dpkg-deb -b --root-owner-group "$work/pkg" "$work/next.deb" >/dev/null
mkdir -p /var/lib/myelin/services && echo '[]' > /var/lib/myelin/services/old.json
dpkg -i --force-confdef --force-confold "$work/next.deb"
check "upgraded" [ "$(dpkg-query -W -f='${Version}' myelin)" = "${version}+next" ]
check "upgrade kept the edited config" [ "$(sha256sum /etc/myelin/myelin.yaml)" = "$edited" ]
check "upgrade kept the state directory" [ -f /var/lib/myelin/services/old.json ]

echo "== remove: the config stays"
dpkg -r myelin
check "removed (config-files left)" [ "$(status)" = rc ]
check "the binary is gone" [ ! -e /usr/bin/myelin ]
check "the config stays after remove" [ "$(sha256sum /etc/myelin/myelin.yaml)" = "$edited" ]

echo "== purge: config and state go"
dpkg --purge myelin
check "purged" [ -z "$(status)" ]
check "the conffile is gone" [ ! -e /etc/myelin/myelin.yaml ]
check "the state directory is gone" [ ! -e /var/lib/myelin ]
check "the unit's enablement is gone" [ ! -e /etc/systemd/system/multi-user.target.wants/myelin.service ]
# The file the user made themselves is theirs: dpkg leaves /etc/myelin with it.
check "a file the user made stays" [ -f /etc/myelin/web-backends.yaml ]
rm -f /etc/myelin/web-backends.yaml && rmdir /etc/myelin

echo "== lintian"
if lintian --fail-on error,warning "$deb" >"$work/lintian" 2>&1; then
  ok "lintian: no errors or warnings"
else
  cat "$work/lintian" >&2; fail "lintian"
fi
cat "$work/lintian"

echo "test-deb: $passed passed, $failed failed"
[ "$failed" = 0 ]
