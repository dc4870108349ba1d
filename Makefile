# kiln — build, test, bench. `make test` installs what the tests need on a
# fresh Debian machine (as root) and runs the whole suite.

CARGO ?= cargo
TEST_DEBS := git docker-registry buildah podman runc skopeo umoci oci-image-tool busybox-static apache2-utils pigz zstd gnupg dpkg-dev debian-archive-keyring python3-venv ca-certificates openssl postgresql chromium chromium-driver man-db
# pyspdxtools (spdx-tools from the Python package index pip is configured
# with), the SPDX validator tests/sbom.rs runs on kiln's SBOMs, and
# jsonschema, which tests/it/workspace.rs validates CI pipelines with.
SPDX_VENV := target/spdx-venv
BENCH_DEBS := pigz

.PHONY: build release test test-deps spdx-validator lint bench example example-offline install clean

build:
	$(CARGO) build

release:
	$(CARGO) build --release

# Install the external tools the integration tests drive (real registry, validators).
test-deps:
	@missing=""; for p in $(TEST_DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

spdx-validator: $(SPDX_VENV)/bin/pyspdxtools $(SPDX_VENV)/bin/jsonschema

$(SPDX_VENV)/bin/pyspdxtools: | test-deps
	rm -rf $(SPDX_VENV)
	python3 -m venv $(SPDX_VENV)
	$(SPDX_VENV)/bin/pip install -q spdx-tools jsonschema

# jsonschema (with PyYAML, which spdx-tools brings) validates the CI
# pipelines `kiln ci generate` writes (tests/it/workspace.rs); this adds it
# to a venv made before it was on the line above.
$(SPDX_VENV)/bin/jsonschema: $(SPDX_VENV)/bin/pyspdxtools
	$(SPDX_VENV)/bin/pip install -q jsonschema

# `make test LINT=1` (what .ci/run runs) lints while it builds: clippy-driver
# compiles the workspace's own crates with clippy's lints on and warnings
# denied, so CI does not check all ~700 dependencies a second time as a
# separate `make lint` would. The flag joins .cargo/config.toml's rustflags.
# (`ifdef LINT` was always true: make predefines LINT for C's lint rules.)
ifeq ($(LINT),1)
LINT_ENV := RUSTC_WORKSPACE_WRAPPER="$$(rustup which clippy-driver 2>/dev/null || command -v clippy-driver)"
LINT_FLAGS := --config 'target.x86_64-unknown-linux-gnu.rustflags=["-D", "warnings"]'
endif

# The tests build without the `pypi-default` feature (kiln's fallback to the
# public index) and the ~80 crates it brings. The network tests find their
# index as kiln does (PIP_INDEX_URL, pip.conf); where neither names one,
# pip's own default (from the validator venv's pip) is passed on instead.
TEST_FEATURES := --no-default-features
PIP_FALLBACK = $$(test -n "$${PIP_INDEX_URL:-}" || $(SPDX_VENV)/bin/pip config list 2>/dev/null | grep -q 'index-url=' || \
  $(SPDX_VENV)/bin/python -c 'from pip._internal.models.index import PyPI; print(PyPI.simple_url)')

# The integration tests' scratch space (unpacked images, sandboxes, their
# caches: 7.1 GB at the peak of a run) goes on /dev/shm when that is a tmpfs
# with 10 GiB free that allows exec (the tests chroot into what they
# unpack; .ci/shm-with-room checks), unless KILN_TEST_SCRATCH is set. On
# the disk file system a third of the suite's CPU was the kernel's inode
# work; a run took 467 s on the tmpfs against 699 s on ext4, same binary.
TEST_SCRATCH = $$(if [ -n "$${KILN_TEST_SCRATCH:-}" ]; then echo "$$KILN_TEST_SCRATCH"; \
  elif shm=$$(.ci/shm-with-room 10); then echo "$$shm/kiln-test"; fi)

test: test-deps spdx-validator
ifeq ($(LINT),1)
	$(CARGO) fmt --all --check
	$(LINT_ENV) $(CARGO) test --workspace --all-targets $(TEST_FEATURES) --no-run $(LINT_FLAGS)
endif
	fallback=$(PIP_FALLBACK); if [ -n "$$fallback" ]; then export PIP_INDEX_URL="$$fallback"; fi; \
	scratch=$(TEST_SCRATCH); if [ -n "$$scratch" ]; then export KILN_TEST_SCRATCH="$$scratch"; fi; \
	$(LINT_ENV) $(CARGO) test --workspace --lib --bins --tests $(TEST_FEATURES) $(LINT_FLAGS) -- --test-threads=4

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Layer pipeline throughput (MB/s) and a side-by-side run against tar | pigz | sha256sum.
bench: release
	@dpkg -s pigz time >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq pigz time)
	$(CARGO) bench --bench layer_pipeline
	bash benches/compare.sh
	bash benches/apt_compare.sh
	bash benches/apt_big.sh
	bash benches/pip_compare.sh
	bash benches/pip_scale.sh
	$(CARGO) bench --bench conda
	bash benches/lock_bench.sh
	bash benches/service_bench.sh
	bash benches/dockerfile_compare.sh
	bash benches/workspace_bench.sh

KILN_BIN := ./target/x86_64-unknown-linux-gnu/release/kiln

# The main job: a Debian python3 image with numpy and pandas (examples/python-data)
# into the OCI layout ./kiln-out (no registry, no daemon; needs the network:
# the host's apt mirror and the package index pip is configured with).
example: release
	$(KILN_BIN) build examples/python-data/kiln.toml --output oci:kiln-out
	@echo "image written to ./kiln-out; run it with podman:"
	@echo "  podman run --rm oci:kiln-out:latest"
	@echo "  podman run --rm oci:kiln-out:latest python3 -c 'import pandas; print(pandas.__version__)'"

# The same without any network: a scratch image with two files (examples/scratch-files).
example-offline: release
	$(KILN_BIN) build examples/scratch-files/kiln.toml --output oci:kiln-out
	@echo "image written to ./kiln-out (try: skopeo inspect oci:kiln-out:latest)"

# The release binary, its man pages and the bash completion under $(PREFIX)
# (DESTDIR for staging): bin/kiln, share/man/man1/kiln*.1,
# share/bash-completion/completions/kiln.
PREFIX ?= /usr/local
install: release
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/man/man1 $(DESTDIR)$(PREFIX)/share/bash-completion/completions
	install -m 0755 $(KILN_BIN) $(DESTDIR)$(PREFIX)/bin/kiln
	$(KILN_BIN) man --dir $(DESTDIR)$(PREFIX)/share/man/man1
	$(KILN_BIN) completions bash > $(DESTDIR)$(PREFIX)/share/bash-completion/completions/kiln

clean:
	$(CARGO) clean
	rm -rf kiln-out
