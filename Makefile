# Set-up, data, tests and the demo. `make test` is what CI runs (.ci/run).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The stamp depends on pyproject.toml, so changed dependencies reinstall and nothing else does.
STAMP := $(VENV)/.amc-installed
FASHION_MNIST := /usr/share/datasets/fashion-mnist
PYTEST := $(PY) -m pytest -q -x -p no:cacheprovider

.PHONY: venv setup data test test-slow demo

venv setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -e '.[dev]'
	touch $@

# Debian's package is the preferred source; without apt (or root) the code downloads
# through torchvision instead, so this target never fails.
data:
	@if [ -d $(FASHION_MNIST) ]; then \
		:; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get update && apt-get install -y dataset-fashion-mnist) \
			|| echo "note: apt-get could not install dataset-fashion-mnist; amc will download Fashion-MNIST"; \
	else \
		echo "note: $(FASHION_MNIST) missing and apt-get unavailable; amc will download Fashion-MNIST"; \
	fi

test: $(STAMP) data
	$(PYTEST)

test-slow: $(STAMP) data
	$(PYTEST) -m slow

demo: $(STAMP) data
	$(VENV)/bin/amc eval --model plain20
