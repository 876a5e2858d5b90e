# Set-up, data, tests and the demo. `make test` is what CI runs (.ci/run).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The stamp depends on pyproject.toml, so changed dependencies reinstall and nothing else does.
STAMP := $(VENV)/.amc-installed
FASHION_MNIST := /usr/share/datasets/fashion-mnist
# Two workers (pytest-xdist) by default: CI has 2 cores and the suite is single-threaded per test.
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q -x -p no:cacheprovider -n $(TEST_WORKERS)

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

# The main job: an AMC search on the shipped plain20 at 50% FLOPs, then the results table.
# 300 episodes (the paper's 100 warm-up + 200) at about 1.5 s each: about 9 minutes on 2 free cores.
# The default lower wall makes every episode use the whole budget (README, "Search quality").
DEMO_EPISODES ?= 300
DEMO_WARMUP ?= 100
DEMO_RUN := runs/demo/plain20-$(shell date +%Y%m%d-%H%M%S)

demo: $(STAMP) data
	$(VENV)/bin/amc search --model plain20 --dataset fashion-mnist --target-flops 0.5 \
		--episodes $(DEMO_EPISODES) --warmup $(DEMO_WARMUP) --run $(DEMO_RUN)
	$(VENV)/bin/amc report --run $(DEMO_RUN)
	@echo "curves: $(VENV)/bin/tensorboard --logdir runs"
