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

.PHONY: demo test bench fuzz fuzz-smoke clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip 'maturin>=1.7,<2'

$(BUILD_STAMP): $(PY) pyproject.toml $(RUST_SOURCES)
	maturin develop --release --extras torch,test
	cargo build --release --locked -p lumijax-export --bin lmn
	touch $@

# torchonn 0.0.8 (pytorch-onn) is a source package whose setup.py imports the
# package itself (so it builds without isolation, next to torch) and whose
# requirements name an unrelated "pyutils" and tensorflow (so it installs
# without them; the bench extra holds what it imports).
$(BENCH_STAMP): $(BUILD_STAMP)
	maturin develop --release --extras torch,test,bench
	$(PY) -m pip install --quiet --no-deps --no-build-isolation 'torchonn==0.0.8'
	cargo build --release --locked -p lumijax-export --bin lmn
	touch $@

demo: $(BUILD_STAMP)
	$(VENV)/bin/lumijax demo --out out

test: $(BUILD_STAMP) fuzz-smoke
	cargo test --workspace
	$(PY) -m pytest -n 2 --dist loadfile

bench: $(BENCH_STAMP)
	for bench in benchmarks/bench_*.py; do echo "== $$bench"; $(PY) "$$bench"; done

# Coverage-guided fuzzing of the .lmn reader, validator and runtime with
# libFuzzer (cargo fuzz, installed into .venv): seeded with small exported
# models and every input that once broke the runtime (export/fuzz/). A crash,
# a leak of memory past -rss_limit_mb or one allocation past -malloc_limit_mb
# stops the run and is saved under export/fuzz/artifacts/.
CARGO_FUZZ := $(VENV)/bin/cargo-fuzz
FUZZ_RUN := cd export && cargo fuzz run --sanitizer none lmn_file fuzz/corpus/lmn_file fuzz/seeds fuzz/regressions -- \
	-max_len=262144 -rss_limit_mb=1024 -malloc_limit_mb=512 -timeout=10 -print_final_stats=1

$(CARGO_FUZZ): $(PY)
	cargo install cargo-fuzz --locked --version 0.13.2 --root $(VENV)

# FUZZ_SECONDS of fuzzing (default an hour); the corpus grows across runs.
fuzz: $(CARGO_FUZZ)
	mkdir -p export/fuzz/corpus/lmn_file
	$(FUZZ_RUN) -max_total_time=$${FUZZ_SECONDS:-3600}

# The smoke run of `make test`: the seeds, the regressions and 20 000 mutations.
fuzz-smoke: $(CARGO_FUZZ)
	rm -rf export/fuzz/corpus/smoke && mkdir -p export/fuzz/corpus/smoke
	$(subst corpus/lmn_file,corpus/smoke,$(FUZZ_RUN)) -runs=20000 -seed=1

clean:
	rm -rf $(VENV) target out
