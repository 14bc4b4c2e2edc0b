# The two commands: `make lab` opens the course, `make test` checks all of it.
# Both create .venv on first use; see the README for GPU nodes and other machines.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.minidp-installed
# One thread per process: the tests and notebooks start 2-3 worker processes on 2 cores.
export OMP_NUM_THREADS ?= 1

.PHONY: lab test check-zh test-fast test-browser test-binder test-grading test-all lint format bench gpu-check clean

$(STAMP): pyproject.toml scripts/install_torch.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) scripts/install_torch.py
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# Opens the course at 00_welcome. As root (a container), Jupyter needs --allow-root.
lab: $(STAMP)
	$(VENV)/bin/jupyter lab --ServerApp.root_dir=notebooks \
	    --LabApp.default_url=/lab/tree/00_welcome.ipynb $(if $(filter 0,$(shell id -u)),--allow-root)

# Every test, then every notebook (notebooks/zh/ too) through nbval (lax: each cell must run;
# assert cells check).
test: lint check-zh
	MPLBACKEND=Agg $(PY) -m pytest -q tests notebooks --nbval-lax --nbval-cell-timeout=120

# The Chinese edition in step with the English: every notebook has its catalog in
# i18n/zh/notebooks/, translated and current; the glossary, the built notebooks/zh/, and the
# package's messages. One line per problem; see minidp/course/translate.
check-zh: $(STAMP)
	$(PY) -m minidp.course.translate check zh --all

test-fast: $(STAMP)
	MPLBACKEND=Agg $(PY) -m pytest -q tests

# Every notebook in JupyterLab in headless Chromium (Debian's chromium; skipped without it,
# except under CI=true). Screenshots go to out/screenshots/.
test-browser: $(STAMP)
	$(PY) -m pytest -m browser tests/browser

# Every notebook in a fresh environment built from binder/ alone, within 60 s and 1.5 GB each.
test-binder: $(STAMP)
	$(PY) -m pytest -m binder tests/binder -s

# Every notebook graded as an instructor would: the solutions full marks, the student versions
# zero, and a sample of the Chinese edition (about 5 minutes on 2 cores).
test-grading: $(STAMP)
	$(PY) -m pytest -m grading tests/test_assignments.py

# What CI runs.
test-all: test test-grading test-browser test-binder

lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(STAMP)
	$(PY) -m minidp.bench allreduce
	$(PY) -m minidp.bench ddp
	$(PY) -m minidp.bench fsdp
	$(PY) -m minidp.bench train

# On a GPU node: a CUDA build of torch (replacing a CPU build), then our DDP and torch's side by
# side on every GPU, under 5 minutes; prints versions, tokens/s, MFU, peak memory, and saves
# them to runs/gpu-check/gpu_check.json.
gpu-check: $(STAMP)
	$(PY) scripts/install_torch.py
	$(PY) scripts/gpu_check.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
