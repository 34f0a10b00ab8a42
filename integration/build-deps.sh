#!/usr/bin/env bash
# What building myelin needs beyond Rust, from Debian's packages, only where missing: etcd-client
# (the etcd source's client) compiles etcd's .proto files with protoc, which also needs the
# well-known types (google/protobuf/*.proto) from libprotobuf-dev.
set -euo pipefail
need=()
command -v protoc >/dev/null || need+=(protobuf-compiler)
[ -e /usr/include/google/protobuf/descriptor.proto ] || need+=(libprotobuf-dev)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "missing: ${need[*]}; run as root or install them with apt-get" >&2
  exit 1
fi
echo "installing: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
