#!/usr/bin/env bash
# What building myelin needs beyond Rust, from Debian's packages, only where missing: etcd-client
# (the etcd source's client) compiles etcd's .proto files with protoc, which also needs the
# well-known types (google/protobuf/*.proto) from libprotobuf-dev.
set -euo pipefail
need=()
command -v protoc >/dev/null || need+=(protobuf-compiler)
[ -e /usr/include/google/protobuf/descriptor.proto ] || need+=(libprotobuf-dev)
source "$(dirname "$0")/apt-install.sh"
apt_install "${need[@]}"
