# Every target sets itself up on a fresh machine: the virtual environment is created and the pinned
# dependencies (constraints.txt) installed on first use.
#
# PY=python3 (any interpreter) uses an environment you already have instead: torch >= 2.11 and
# torchvision must be there; nothing is created or installed, no package index is needed, and the
# checkout is put on PYTHONPATH. The profiler extras (torch-tb-profiler, line_profiler,
# memory_profiler) are optional there: only the targets that need them say so when they are missing.
PYTHON ?= python3
VENV := .venv
PY ?=
RUN ?=
ARGS ?=
ifeq ($(strip $(PY)),)
SETUP := $(VENV)/.installed
RUNPY := $(VENV)/bin/python
else
SETUP := check-env
RUNPY := PYTHONPATH=$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH} $(PY)
endif
WB := $(RUNPY) -m workbench.cli

.PHONY: help setup check-env bench-verdicts ladder profile-baseline report tensorboard profile-lines bench test gpu-check experiments docs clean

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

setup: $(SETUP) ## create .venv and install the pinned dependencies (with PY=...: check that environment)

check-env:
	@$(RUNPY) -m workbench.environment_check

ladder: setup ## run every stage of the ladder, then write the report (the main job)
	$(WB) run $(ARGS)
	$(WB) report

profile-baseline: setup ## measure and trace the baseline stage only, and say where its trace is
	$(WB) run --stages baseline $(ARGS)

report: setup ## CSV, dashboard, plots and optimization_report.md for the newest run (or RUN=name)
	$(WB) report $(RUN)

tensorboard: setup ## TensorBoard with the torch-tb-profiler plugin on profiles/
	$(RUNPY) -m workbench.environment_check tensorboard torch_tb_profiler
	$(RUNPY) -m tensorboard.main --logdir profiles --bind_all

profile-lines: setup ## line_profiler over the training step and data loading, memory_profiler over host memory
	$(RUNPY) -m workbench.environment_check line_profiler memory_profiler
	$(WB) profile-lines $(ARGS)

experiments: setup ## the lab's experiments (workers, pipeline, precision, memory, compile, clipping)
	$(WB) experiment all $(ARGS)

bench: setup ## harness overhead against a bare hand-written loop (prints both)
	$(RUNPY) benchmarks/harness_overhead.py $(ARGS)

bench-verdicts: setup ## the default ladder 3 times: per-stage status per run, agreement, headline intervals
	$(RUNPY) benchmarks/verdicts.py $(ARGS)

gpu-check: setup ## short ladder on a GPU with the assertions that must hold there
	$(RUNPY) benchmarks/gpu_check.py $(ARGS)

test: setup ## the test suite (CPU, a few minutes)
	$(RUNPY) -m pytest -q

docs: setup ## regenerate docs/commands.md from the command line's parser (the suite checks it is current)
	$(RUNPY) -m workbench.reference > docs/commands.md

clean: ## remove generated profiles, reports and data (keeps .venv)
	rm -rf profiles/*/ reports/*/ reports/latest data/
