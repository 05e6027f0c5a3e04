# drove: two commands for a newcomer on Debian 12.
#   make image   installs what is missing, builds drove, writes the default media into out/
#   make test    the same, then unit tests, builder integration tests and QEMU boot tests
# Everything runs in cargo's release profile so binaries, tests and media share one build.

CARGO   ?= cargo
OUT     ?= out
PROFILE := release
BIN     := target/$(PROFILE)
CARGO_FLAGS := --$(PROFILE) --locked

.PHONY: all deps build image test unit-test qemu-test qemu-cluster bench kernel fmt clean fuzz soak sim

all: image

# Debian packages (kernel, CRIU, boot loaders, QEMU, ...); a no-op when all are present.
deps:
	@./scripts/install-deps.sh

build: deps
	$(CARGO) build $(CARGO_FLAGS) -p drove -p drove-agent

image: build
	$(BIN)/drove build --out $(OUT)

# Unit tests need no root and no QEMU; builder integration tests need the host kernel and CRIU
# (installed by deps); the VM tests boot what `image` wrote.
test: image unit-test qemu-test

unit-test: build
	$(CARGO) test $(CARGO_FLAGS) -p drove -p drove-agent

# `kernel` first: tests/kernel.rs boots the compiled kernel (a cold compile takes minutes; the
# cache in ~/.cache/drove/kernel makes it instant afterwards).
qemu-test: image kernel
	@./scripts/install-deps.sh test
	DROVE_OUT=$(CURDIR)/$(OUT) DROVE_BIN=$(CURDIR)/$(BIN)/drove \
		$(CARGO) test $(CARGO_FLAGS) -p drove-qemu-tests -- --test-threads=2

# A live 3-node cluster on a private vde segment; prints `drove status` and the API addresses.
qemu-cluster: build
	DROVE_BIN=$(CURDIR)/$(BIN)/drove $(CARGO) run $(CARGO_FLAGS) -p drove-qemu-tests --bin qemu-cluster

# The compiled migration kernel (issue 6): cached in ~/.cache/drove/kernel, output in out/kernel.
# Use it with `[kernel] compiled = "out/kernel"` in a cluster config.
kernel: deps
	@./scripts/install-deps.sh kernel
	$(CARGO) build $(CARGO_FLAGS) -p drove
	$(BIN)/drove kernel build --out $(OUT)/kernel

bench: image
	./scripts/bench.sh

# Scale simulation (issue 7): real gossip and balancer, simulated clock and network; prints a
# markdown report. SIZES (default 10 100 1000 10000) picks the cluster sizes.
sim:
	./scripts/bench-sim.sh

# cargo-fuzz targets (fuzz/), FUZZ_SECS (default 60) each; installs cargo-fuzz when missing.
fuzz:
	./scripts/fuzz.sh

# Outside CI: 3 QEMU nodes, jobs arriving for SOAK_MINUTES (default 30), a node killed and
# restarted every few minutes; every job must finish right or be reported lost with a reason.
soak: build
	DROVE_BIN=$(CURDIR)/$(BIN)/drove $(CARGO) run $(CARGO_FLAGS) -p drove-qemu-tests --bin soak

fmt:
	$(CARGO) fmt --all

clean:
	rm -rf $(OUT)
	$(CARGO) clean
