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
# What the build needs (protoc for etcd-client).
"$(dirname "$0")/build-deps.sh"
source "$(dirname "$0")/apt-install.sh"
# --- etcd ---
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
  apt_install "${need[@]}"
  # --- etcd --- The tests run their own cluster; Debian's etcd service (2379/2380)
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
apt_install "${sd_need[@]}"
