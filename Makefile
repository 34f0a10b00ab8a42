# myelin: `make demo` and `make test` work on a fresh Debian 12 machine (as root).
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: all build release deb test test-deps test-deb bench demo demo-stop clean

all: build

build:
	$(CARGO) build --workspace

release:
	$(CARGO) build --release -p myelin

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

# Installs what the tests need (HAProxy, ...), builds, and runs every test: unit, property and
# end-to-end (the real binary against real HAProxy on 127.0.0.1).
test: test-deps
	$(CARGO) build -p myelin
	$(CARGO) test --workspace --no-fail-fast
	$(MAKE) test-deb

# Benchmarks: report figures (see docs/performance.md); not part of `make test`.
bench: test-deps
	$(CARGO) build -p myelin
	$(CARGO) test -p myelin-integration --test bench_apply -- --ignored --nocapture --test-threads=1 2>&1 | grep '^BENCH'

test-deps:
	integration/install-deps.sh

# HAProxy and myelin in the foreground on a built-in file-discovery example (127.0.0.1 only).
demo:
	integration/demo.sh

demo-stop:
	integration/demo.sh stop

clean:
	$(CARGO) clean
