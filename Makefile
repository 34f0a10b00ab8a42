# myelin: `make demo` and `make test` work on a fresh Debian 12 machine (as root).
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: all build build-deps release deb test test-deps test-deb test-systemd fuzz bench bench-scale docker-engine etcd-cluster demo demo-stop clean

all: build

build: build-deps
	$(CARGO) build --workspace

release: build-deps
	$(CARGO) build --release -p myelin

# protoc (etcd-client's build needs it), installed from Debian when missing.
build-deps:
	integration/build-deps.sh

# The Debian package (cargo-deb, installed from crates.io when missing): release build, man page
# generated from the CLI, then `cargo deb --no-build`. The .deb is left in $(DEB_DIR).
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
DEB_DIR := $(TARGET_DIR)/debian
deb: release
	command -v cargo-deb >/dev/null || $(CARGO) install --locked cargo-deb
	$(TARGET_DIR)/release/myelin manpage | gzip -9n > $(TARGET_DIR)/release/myelin.1.gz
	rm -f $(DEB_DIR)/myelin_*.deb
	$(CARGO) deb -p myelin --no-build --output $(DEB_DIR)/

# Install, check, remove and purge the package on this machine (as root), and run lintian.
test-deb: deb
	packaging/test-deb.sh $(DEB_DIR)/myelin_*.deb

# The package under a real systemd as PID 1: a Debian 12 system (debootstrap, cached in
# /var/cache/myelin-test) booted with systemd-nspawn, loopback only. See docs/operations.md.
test-systemd: test-deps deb
	packaging/test-systemd.sh $(DEB_DIR)/myelin_*.deb

# Installs what the tests need (HAProxy, Docker, ...), starts the private Docker engines (two: the
# many-hosts tests run one per "host"), builds,
# and runs every test: unit, property and end-to-end (the real binary against real HAProxy and
# a real Docker engine, on 127.0.0.1), then the Debian package's install/remove/purge test and
# the package under a booted systemd.
# The engines (and the etcd cluster) are stopped afterwards, pass or fail.
test: test-deps docker-engine etcd-cluster
	$(CARGO) build -p myelin
	status=0; $(CARGO) test --workspace --no-fail-fast || status=$$?; integration/docker-engine.sh stop; $(ENGINE_B) integration/docker-engine.sh stop; integration/etcd-cluster.sh stop; integration/zookeeper.sh stop; exit $$status
	$(MAKE) test-deb
	$(MAKE) test-systemd

# The fuzz suite at length (crates/fuzz; see docs/operations.md): MYELIN_FUZZ_CASES cases per
# target (`make test` runs 256). Not part of `make test`. `make fuzz MYELIN_FUZZ_CASES=1000000`.
MYELIN_FUZZ_CASES ?= 100000
fuzz: test-deps
	MYELIN_FUZZ_CASES=$(MYELIN_FUZZ_CASES) $(CARGO) test -p myelin-fuzz

# Benchmarks: report figures (see docs/performance.md); not part of `make test`.
bench: docker-engine etcd-cluster
	$(CARGO) build -p myelin
	status=0; $(CARGO) test -p myelin-integration --test bench_apply -- --ignored --nocapture --test-threads=1 2>&1 | grep -o 'BENCH.*' || status=$$?; \
	for n in 100 200; do integration/bench/file-sources.sh $${CARGO_TARGET_DIR:-target}/debug/myelin $$n 30 || status=$$?; done; \
	$(CARGO) run -q -p myelin-integration --bin consul-bench || status=$$?; \
	$(CARGO) run -q -p myelin-integration --bin zookeeper-bench || status=$$?; integration/zookeeper.sh stop; \
	$(CARGO) run -q -p myelin-integration --bin docker-bench || status=$$?; \
	$(CARGO) run -q -p myelin-integration --bin fleet-bench || status=$$?; integration/docker-engine.sh stop; $(ENGINE_B) integration/docker-engine.sh stop; \
	$(CARGO) run -q -p myelin-integration --bin etcd-bench || status=$$?; integration/etcd-cluster.sh stop; \
	$(MAKE) bench-scale || status=$$?; exit $$status

# myelin at 1,000 / 10,000 / 100,000 backends (release build): figures into docs/performance.md,
# chart into docs/scale.svg. MYELIN_BENCH_SIZES=1000,10000 and MYELIN_BENCH_IDLE=60 adjust it.
bench-scale: test-deps
	$(CARGO) build --release -p myelin
	$(CARGO) run -q --release -p myelin-integration --bin scale-bench

test-deps:
	integration/install-deps.sh

# The etcd tests' three-member cluster on 127.0.0.1 (client ports 23791-23793, data in
# /tmp/myelin-etcd); `integration/etcd-cluster.sh stop` stops it.
etcd-cluster: test-deps
	integration/etcd-cluster.sh start

# The private engine of the Docker tests (unix socket /tmp/myelin-docker/docker.sock) and the
# test image; `integration/docker-engine.sh stop` stops it. The many-hosts tests and benchmark
# (integration/tests/fleet.rs, fleet-bench) add a second engine beside it, host B's
# (/tmp/myelin-docker-b, its own bridge): `$(ENGINE_B) integration/docker-engine.sh stop`.
ENGINE_B := MYELIN_DOCKER_DIR=$(or $(MYELIN_DOCKER_B_DIR),/tmp/myelin-docker-b) MYELIN_DOCKER_TLS_PORT=$(or $(MYELIN_DOCKER_B_TLS_PORT),23762) \
	MYELIN_DOCKER_BRIDGE=$(or $(MYELIN_DOCKER_B_BRIDGE),myelin-b0) MYELIN_DOCKER_BRIDGE_CIDR=$(or $(MYELIN_DOCKER_B_BRIDGE_CIDR),198.18.2.1/24)
docker-engine: test-deps
	integration/docker-engine.sh start
	$(ENGINE_B) integration/docker-engine.sh start

# Timings of Docker changes reaching HAProxy (median and worst of 20 rounds); see
# docs/performance.md. Not part of `make test`.

# HAProxy and myelin in the foreground on a built-in file-discovery example (127.0.0.1 only).
demo:
	integration/demo.sh

demo-stop:
	integration/demo.sh stop

clean:
	$(CARGO) clean
