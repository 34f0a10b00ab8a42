# myelin: `make demo` and `make test` work on a fresh Debian 12 machine (as root).
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: all build release test test-deps bench demo demo-stop clean

all: build

build:
	$(CARGO) build --workspace

release:
	$(CARGO) build --release -p myelin

# Installs what the tests need (HAProxy, ...), builds, and runs every test: unit, property and
# end-to-end (the real binary against real HAProxy on 127.0.0.1).
test: test-deps
	$(CARGO) build -p myelin
	$(CARGO) test --workspace --no-fail-fast

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
