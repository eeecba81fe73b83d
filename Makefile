# focusfuse: `make demo` fuses the bundled stacks, `make test` runs the suite.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
FOCUSFUSE := $(VENV)/bin/focusfuse
DEMO_OUT ?= out/demo

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

lint: install
	$(PYTHON) -m compileall -q focusfuse tests bench examples

clean:
	rm -rf $(VENV) out build *.egg-info
