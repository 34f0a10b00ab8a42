# myelin: `make demo` and `make test` work on a fresh Debian 12 machine (as root).
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: all build release test test-deps bench docker-engine demo demo-stop clean

all: build

build:
	$(CARGO) build --workspace

release:
	$(CARGO) build --release -p myelin

# Installs what the tests need (HAProxy, Docker, ...), starts a private Docker engine, builds,
# and runs every test: unit, property and end-to-end (the real binary against real HAProxy and
# a real Docker engine, on 127.0.0.1). The engine is stopped afterwards, pass or fail.
test: test-deps docker-engine
	$(CARGO) build -p myelin
	status=0; $(CARGO) test --workspace --no-fail-fast || status=$$?; integration/docker-engine.sh stop; exit $$status

test-deps:
	integration/install-deps.sh

# The private engine of the Docker tests (unix socket /tmp/myelin-docker/docker.sock) and the
# test image; `integration/docker-engine.sh stop` stops it.
docker-engine: test-deps
	integration/docker-engine.sh start

# Timings of Docker changes reaching HAProxy (median and worst of 20 rounds); see
# docs/performance.md. Not part of `make test`.
bench: docker-engine
	$(CARGO) build -p myelin
	status=0; $(CARGO) run -q -p myelin-integration --bin docker-bench || status=$$?; integration/docker-engine.sh stop; exit $$status

# HAProxy and myelin in the foreground on a built-in file-discovery example (127.0.0.1 only).
demo:
	integration/demo.sh

demo-stop:
	integration/demo.sh stop

clean:
	$(CARGO) clean
