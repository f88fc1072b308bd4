# SkinFusion: `make demo` serves the shipped HAM10000 model in the app; `make test` runs the test suite;
# `make train` trains the quick synthetic demo model (outputs/skin-fusion).
# Both install what they need first (a .venv beside this file; Debian chromium for the browser tests).

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export GRADIO_ANALYTICS_ENABLED := False

.PHONY: setup browser test demo train serve

setup: $(VENV)/.installed

# Re-installs only when requirements.txt changes.
$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

# Headless Chromium for the browser test (Debian package; Playwright drives it, downloads no browser).
browser:
	@test -x /usr/lib/chromium/chromium || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium; }

test: setup browser
	$(PY) -m pytest

train: setup
	$(PY) train.py

serve: setup
	$(PY) app.py

demo: serve
