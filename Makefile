# Set-up is part of every entry point: each target creates .venv from the
# system python3 when it is missing, installs lumijax with its extras and
# builds the Rust extension in release mode. Stamps keep re-runs fast: pip
# and maturin run again only when pyproject.toml or a Rust source changes.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export VIRTUAL_ENV := $(abspath $(VENV))
export PATH := $(VIRTUAL_ENV)/bin:$(PATH)

RUST_SOURCES := Cargo.toml Cargo.lock $(shell find native bridge export -name '*.rs' -o -name Cargo.toml)
# The lmn command lands in target/release/lmn (lumijax.runtime.lmn_binary finds it).
BUILD_STAMP := $(VENV)/.built-torch-test
BENCH_STAMP := $(VENV)/.built-bench

.PHONY: demo test bench fuzz clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip 'maturin>=1.7,<2'

$(BUILD_STAMP): $(PY) pyproject.toml $(RUST_SOURCES)
	maturin develop --release --extras torch,test
	cargo build --release --locked -p lumijax-export --bin lmn
	touch $@

$(BENCH_STAMP): $(BUILD_STAMP)
	maturin develop --release --extras torch,test,bench
	cargo build --release --locked -p lumijax-export --bin lmn
	touch $@

demo: $(BUILD_STAMP)
	$(VENV)/bin/lumijax demo --out out

test: $(BUILD_STAMP)
	cargo test --workspace
	$(PY) -m pytest

bench: $(BENCH_STAMP)
	for bench in benchmarks/bench_*.py; do echo "== $$bench"; $(PY) "$$bench"; done

# A million mutated .lmn files through the reader and the runtime (not part of test).
fuzz:
	cargo run --release --locked -p lumijax-export --example fuzz -- $${FUZZ_ITERATIONS:-1000000} $${FUZZ_SEED:-0}

clean:
	rm -rf $(VENV) target out
