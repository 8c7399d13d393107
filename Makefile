# Every target sets itself up on a fresh machine: the virtual environment is created and the pinned
# dependencies (constraints.txt) installed on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
WB := $(BIN)/workbench
RUN ?=
ARGS ?=

.PHONY: help setup ladder profile-baseline report tensorboard profile-lines bench test gpu-check experiments clean

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

setup: $(VENV)/.installed ## create .venv and install the pinned dependencies

ladder: setup ## run every stage of the ladder, then write the report (the main job)
	$(WB) run $(ARGS)
	$(WB) report

profile-baseline: setup ## measure and trace the baseline stage only, and say where its trace is
	$(WB) run --stages baseline $(ARGS)

report: setup ## CSV, dashboard, plots and optimization_report.md for the newest run (or RUN=name)
	$(WB) report $(RUN)

tensorboard: setup ## TensorBoard with the torch-tb-profiler plugin on profiles/
	$(BIN)/tensorboard --logdir profiles --bind_all

profile-lines: setup ## line_profiler over the training step and data loading, memory_profiler over host memory
	$(WB) profile-lines $(ARGS)

experiments: setup ## the lab's experiments (workers, pipeline, precision, memory, compile, clipping)
	$(WB) experiment all $(ARGS)

bench: setup ## harness overhead against a bare hand-written loop (prints both)
	$(BIN)/python benchmarks/harness_overhead.py $(ARGS)

gpu-check: setup ## short ladder on a GPU with the assertions that must hold there
	$(BIN)/python benchmarks/gpu_check.py $(ARGS)

test: setup ## the test suite (CPU, a few minutes)
	$(BIN)/python -m pytest -q

clean: ## remove generated profiles, reports and data (keeps .venv)
	rm -rf profiles/*/ reports/*/ reports/latest data/
