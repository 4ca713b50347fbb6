# i2v-server — its build, run, test and benchmark commands. Every target installs what it needs first.
SHELL := /bin/bash
SWIFT_BUILD_FLAGS ?=
# Release builds get their own scratch path so they never hold the lock of the debug build in .build.
RELEASE_FLAGS := -c release --scratch-path .build-release
RELEASE_BIN := .build-release/release/i2v-server

.PHONY: run test test-python lint-swift lint-python test-clients clients-env build build-release python-env swagger-ui system-deps system-deps-test system-deps-bench bench clean-data image-binary image test-image

# The worker's venv (network and disk) is built while Swift compiles (CPU): started first, waited for last.
# Its log goes to .build-logs/python-env.log and is shown when it fails.
define WITH_PYTHON_ENV
	@mkdir -p .build-logs
	@scripts/python-env.sh >.build-logs/python-env.log 2>&1 & venv=$$!; \
	  status=0; $(1) || status=$$?; \
	  if ! wait $$venv; then cat .build-logs/python-env.log >&2; echo "python-env failed" >&2; exit 1; fi; \
	  cat .build-logs/python-env.log >&2; exit $$status
endef

## make run: install what is missing, build, and serve on :8088 with the demo model and SQLite in ./data
run: swagger-ui
	$(call WITH_PYTHON_ENV,scripts/install-system-deps.sh run && swift build $(RELEASE_FLAGS) $(SWIFT_BUILD_FLAGS))
	$(RELEASE_BIN) serve

## make test: the whole suite (Swift and Python); the store tests get a throwaway PostgreSQL cluster,
## started before `swift test` and always stopped after it (scripts/test-postgres.sh run)
test: swagger-ui lint-swift
	$(call WITH_PYTHON_ENV,scripts/install-system-deps.sh test && swift build --build-tests $(SWIFT_BUILD_FLAGS))
	I2V_TEST_STRICT=1 I2V_TEST_PYTHON=$(CURDIR)/.venv/bin/python scripts/test-postgres.sh run swift test --skip-build $(SWIFT_BUILD_FLAGS) 2>&1 | tee .build/swift-test.log; test $${PIPESTATUS[0]} -eq 0
	$(MAKE) test-python
	$(MAKE) test-clients

## make test-python: the worker's tests, after lint-python (so `make test` checks the format and the lint rules too)
test-python: python-env lint-python
	.venv/bin/python -m pytest worker/tests -q

## make lint-swift: swift-format (the toolchain's `swift format`, configured in .swift-format) on the Swift tree, warnings
## as errors. `swift format format --in-place --recursive --parallel $(SWIFT_TREE)` applies it.
SWIFT_TREE := Sources Tests Package.swift
lint-swift:
	swift format lint --strict --recursive --parallel $(SWIFT_TREE)

## make lint-python: ruff (pinned in worker/requirements.lock, configured in ruff.toml) on the Python tree: the format
## as `ruff format` writes it, and the lint rules. `.venv/bin/ruff format $(PYTHON_TREE) && .venv/bin/ruff check --fix
## $(PYTHON_TREE)` applies what it can.
PYTHON_TREE := worker integration bench
lint-python: python-env
	.venv/bin/ruff format --check $(PYTHON_TREE)
	.venv/bin/ruff check $(PYTHON_TREE)

## make test-clients: the official OpenAI SDK against a real `serve` (debug build, demo model) on loopback
test-clients: system-deps-test python-env clients-env
	swift build --build-tests $(SWIFT_BUILD_FLAGS)
	I2V_SERVER_BIN=$$(swift build --show-bin-path $(SWIFT_BUILD_FLAGS))/i2v-server I2V_TEST_PYTHON=$(CURDIR)/.venv/bin/python \
	  .venv-clients/bin/python -m pytest integration/clients -q

clients-env:
	scripts/clients-env.sh

## make bench: release build, then the benchmark table (bench/README.md)
bench: system-deps-bench python-env build-release
	.venv/bin/python bench/run.py --server $(RELEASE_BIN)

build: system-deps
	swift build $(SWIFT_BUILD_FLAGS)

build-release: system-deps
	swift build $(RELEASE_FLAGS) $(SWIFT_BUILD_FLAGS)

python-env:
	scripts/python-env.sh

swagger-ui:
	scripts/fetch-swagger-ui.sh

system-deps:
	scripts/install-system-deps.sh run

system-deps-test:
	scripts/install-system-deps.sh test

system-deps-bench:
	scripts/install-system-deps.sh bench

## make image-binary: the release binary for the container image (Swift's runtime linked in, debug info stripped),
## staged with its resource bundle in deploy/dist/, which the Containerfile copies (no Swift toolchain image needed)
## Rebuilt only when a source or the package manifest changed since the binary was staged.
image-binary: deploy/dist/i2v-server
deploy/dist/i2v-server: Package.swift $(wildcard Package.resolved) $(shell find Sources -type f 2>/dev/null)
	scripts/install-system-deps.sh run
	swift build $(RELEASE_FLAGS) --static-swift-stdlib $(SWIFT_BUILD_FLAGS)
	rm -rf deploy/dist/i2v-server deploy/dist/*.resources
	cp $(RELEASE_BIN) deploy/dist/i2v-server
	strip --strip-debug deploy/dist/i2v-server
	cp -R .build-release/release/i2v-server_I2VOpenAPI.resources deploy/dist/

## make image: the container image (IMAGE=i2v-server:latest; CUDA base and torch by default; for the CPU/demo image:
## make image IMAGE=i2v-server:cpu IMAGE_BUILD_ARGS="--build-arg BASE_IMAGE=docker.io/library/debian:bookworm-slim --build-arg TORCH_VARIANT=cpu")
CONTAINER_ENGINE ?= $(shell command -v podman >/dev/null 2>&1 && echo podman || echo docker)
IMAGE ?= i2v-server:latest
IMAGE_BUILD_ARGS ?=
image: image-binary
	$(CONTAINER_ENGINE) build $(if $(filter podman,$(notdir $(CONTAINER_ENGINE))),--format docker) -f Containerfile -t $(IMAGE) $(IMAGE_BUILD_ARGS) .

## make test-image: builds the CPU/demo image on a locally made Debian base and tests it with podman: one
## container (`serve`), the Kubernetes manifests through `podman kube play`, schemas and lints (scripts/test-image.sh).
## Not part of `make test`: about 2 min with podman's cache warm, 5.5 min from nothing but the staged binary, and on a
## fresh clone the static release build before it.
test-image: image-binary
	scripts/test-image.sh

## make clean-data: forget every task, video and the generated API key
clean-data:
	rm -rf data
