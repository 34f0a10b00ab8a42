#!/usr/bin/env bash
# Install what myelin's tests and demo need from Debian's packages, only where missing.
set -euo pipefail
need=()
command -v haproxy >/dev/null || need+=(haproxy)
command -v busybox >/dev/null || need+=(busybox-static)
# The Docker tests' private engine (integration/docker-engine.sh); the test image is built from
# busybox-static, which must be the static build (it runs alone in a `FROM scratch` image).
command -v dockerd >/dev/null || need+=(docker.io)
[ -x /usr/bin/docker ] || need+=(docker.io)
command -v openssl >/dev/null || need+=(openssl)   # the engine's TLS certificates
# --- etcd (issue 10) ---
# etcd-client (the crate) compiles etcd's .proto files at build time: it needs protoc.
# It also needs the well-known types (google/protobuf/*.proto), which are in libprotobuf-dev (a
# recommendation of protobuf-compiler, so not installed with --no-install-recommends).
command -v protoc >/dev/null || need+=(protobuf-compiler)
[ -e /usr/include/google/protobuf/descriptor.proto ] || need+=(libprotobuf-dev)
# The etcd tests' three-member cluster (integration/etcd-cluster.sh); etcdctl for its checks.
command -v etcd >/dev/null || need+=(etcd-server)
command -v etcdctl >/dev/null || need+=(etcd-client)
# `ss`: which member a myelin process is connected to.
command -v ss >/dev/null || need+=(iproute2)
# --- end etcd ---
# The Consul tests (integration/tests/consul*.rs): the TLS test makes a CA and certificates with
# openssl, and HAProxy terminates TLS in front of the Consul test double.
command -v openssl >/dev/null || need+=(openssl)
# --- ZooKeeper tests (integration/zookeeper.sh): Debian's server, which brings a Java runtime
# (default-jre) and slf4j-simple (its log). The `zookeeper` package starts no service.
[ -f /usr/share/java/zookeeper.jar ] && [ -f /usr/share/java/slf4j-simple.jar ] && command -v java >/dev/null || need+=(zookeeper)
# --- end ZooKeeper
if command -v busybox >/dev/null && ldd "$(command -v busybox)" >/dev/null 2>&1; then need+=(busybox-static); fi
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "missing: ${need[*]}; run as root or install them with apt-get" >&2
    exit 1
  fi
  echo "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Packages must not start their services (docker.io's system dockerd would take the default
  # bridge): the tests start their own.
  made_policy=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && made_policy=1
  fi
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  if [ -n "$made_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
  # --- etcd (issue 10) --- The tests run their own cluster; Debian's etcd service (2379/2380)
  # would start at the next boot: disable it when this script installed it.
  if [[ " ${need[*]} " == *" etcd-server "* ]] && [ -d /run/systemd/system ]; then
    systemctl disable --now etcd >/dev/null 2>&1 || true
  fi
  # --- end etcd ---
fi
# The tests start their own HAProxy; the packaged service is not needed.
haproxy -v | sed -n 1p   # sed reads it all: `head` could end the pipe early (SIGPIPE under pipefail)

# --- test-systemd (packaging/test-systemd.sh): a Debian system booted with systemd-nspawn.
sd_need=()
command -v debootstrap >/dev/null || sd_need+=(debootstrap)
command -v systemd-nspawn >/dev/null || sd_need+=(systemd-container)
if [ ${#sd_need[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || { echo "missing: ${sd_need[*]}; run as root or install them with apt-get" >&2; exit 1; }
  echo "installing: ${sd_need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${sd_need[@]}" >/dev/null
fi
