# focusfuse: `make demo` fuses the bundled stacks, `make test` runs the suite, `make lint` checks the code.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
FOCUSFUSE := $(VENV)/bin/focusfuse
DEMO_OUT ?= out/demo
PAIRS ?= ../shared/data/pairs26
EVAL_OUT ?= out/evaluate

.PHONY: install demo test bench evaluate lint clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt setup.cfg pyproject.toml
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -r requirements.txt
	$(PYTHON) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

demo: install
	mkdir -p $(DEMO_OUT)
	$(FOCUSFUSE) stack examples/pair/lytro_01_1.png examples/pair/lytro_01_2.png -o $(DEMO_OUT)/pair.png --quiet
	$(FOCUSFUSE) stack examples/stack8/ -o $(DEMO_OUT)/stack8.png --quiet
	$(FOCUSFUSE) stack examples/stack8/ -o $(DEMO_OUT)/stack8-serial.png --strategy serial --quiet
	$(PYTHON) examples/report_demo.py $(DEMO_OUT)

test: install
	$(PYTHON) -m pytest -q

bench: install
	$(PYTHON) bench/speed.py

# The paper's 26 pairs, each fused by `focusfuse stack A B`, judged beside Table 1.
evaluate: install
	@test -d $(PAIRS) || { echo "make evaluate: $(PAIRS) not found (set PAIRS=DIR)" >&2; exit 1; }
	mkdir -p $(EVAL_OUT)
	for a in $(PAIRS)/*_1.png; do name=$$(basename "$$a" _1.png); \
	  $(FOCUSFUSE) stack "$$a" "$(PAIRS)/$${name}_2.png" -o "$(EVAL_OUT)/$$name.png" --quiet || exit 1; done
	$(FOCUSFUSE) evaluate --pairs $(PAIRS) --fused $(EVAL_OUT) --compare paper --json $(EVAL_OUT)/scores.json

# ruff (lint and format, pyproject.toml) over everything; mypy over the package.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) out build *.egg-info
