# Sourced by the install scripts: `apt_install PKG...` installs Debian packages (as root) without
# letting them start their services: the tests start their own (docker.io's system dockerd would
# take the default bridge; Debian's etcd would take 2379/2380).
apt_install() {
  [ $# -gt 0 ] || return 0
  if [ "$(id -u)" != 0 ]; then
    echo "missing: $*; run as root or install them with apt-get" >&2
    return 1
  fi
  echo "installing: $*"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  local made_policy='' status=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && made_policy=1
  fi
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null || status=$?
  if [ -n "$made_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
  return "$status"
}
