# i2v-server — the commands of SPEC §8. Every target installs what it needs first.
SHELL := /bin/bash
SWIFT_BUILD_FLAGS ?=
# Release builds get their own scratch path so they never hold the lock of the debug build in .build.
RELEASE_FLAGS := -c release --scratch-path .build-release
RELEASE_BIN := .build-release/release/i2v-server

.PHONY: run test test-python build build-release python-env swagger-ui system-deps system-deps-test system-deps-bench bench clean-data

## make run: install what is missing, build, and serve on :8088 with the demo model and SQLite in ./data
run: system-deps python-env swagger-ui build-release
	$(RELEASE_BIN) serve

## make test: the whole suite (Swift and Python)
test: system-deps-test python-env swagger-ui
	swift build --build-tests $(SWIFT_BUILD_FLAGS)
	I2V_TEST_STRICT=1 I2V_TEST_PYTHON=$(CURDIR)/.venv/bin/python swift test --skip-build $(SWIFT_BUILD_FLAGS) 2>&1 | tee .build/swift-test.log; test $${PIPESTATUS[0]} -eq 0
	$(MAKE) test-python

test-python: python-env
	.venv/bin/python -m pytest worker/tests -q

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

## make clean-data: forget every task, video and the generated API key
clean-data:
	rm -rf data
