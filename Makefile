# Two commands set everything up from nothing and run (README):
#   make run    the main job: `lora-lab reproduce --quick` on the tiny default (CPU, offline, minutes),
#               ending with the claims scorecard and the path of report.html
#   make test   the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install run pair test test-fast clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch is pinned to 2.13.0 in constraints.txt: the CPU wheel here, the CUDA build on GPU nodes.
	$(BIN)/pip install --disable-pip-version-check -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/lora-lab reproduce --quick

# LoRA and FullFT on the tiny default, both final losses (two ~25-second runs).
pair: $(STAMP)
	$(BIN)/lora-lab pair

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) runs runs-quick outputs .pytest_cache
