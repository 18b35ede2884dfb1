# The two commands a newcomer needs: `make demo` and `make test`.
# Both create the virtual environment on first use and install everything.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl

.PHONY: demo test venv clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip >/dev/null
	$(BIN)/python -m pip install -e ".[all,dev]"
	$(BIN)/python -m pip install --no-deps "openpi-client>=0.1.2"  # see the dev extra in pyproject.toml
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/vla-adp demo

test: $(STAMP)
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) build src/*.egg-info
