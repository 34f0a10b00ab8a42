#!/usr/bin/env bash
# Install what myelin's tests and demo need from Debian's packages, only where missing.
set -euo pipefail
need=()
command -v haproxy >/dev/null || need+=(haproxy)
command -v busybox >/dev/null || need+=(busybox-static)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "missing: ${need[*]}; run as root or install them with apt-get" >&2
    exit 1
  fi
  echo "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# The tests start their own HAProxy; the packaged service is not needed.
haproxy -v | head -n 1
