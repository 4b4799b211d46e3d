# Two commands do all the set-up on a fresh clone that has Python 3.11 and make:
#   make run   - create .venv, install the project, run the `train` pipeline
#   make test  - the same set-up, then the test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
# A GPU machine (nvidia-smi finds one) gets the CUDA build of TensorFlow.
comma  := ,
GPU    := $(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu)
EXTRAS := test$(if $(GPU),$(comma)$(GPU))
STAMP  := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
PIPELINE ?= train
# Offline by default: Prefect never calls home.
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
# Compiled modules are cached in __pycache__ (ignored by git) even where the environment asks
# not to: the suite's processes (pytest workers, each `cifar` command a test starts) then share
# them, and pytest keeps its rewritten test modules (collection 3.1 -> 1.3 s per worker).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: run test test-fast setup browser bench clean

setup: $(STAMP)

# Reinstall only when the project's metadata changed (pip skips the rest).
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[$(EXTRAS)]'
	@rm -f $(VENV)/.installed-*
	@touch $@

run: $(STAMP)
	$(BIN)/cifar run $(PIPELINE)

# Headless Chromium (Debian's package) for the report's browser test, when missing.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the report browser test"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null \
	  || echo "could not install chromium: the report's browser test will fail until it is installed"; }

test: $(STAMP) browser
	$(BIN)/python -m pytest

# The edit loop: every test that needs neither the Prefect engine nor real server or CLI processes.
# These keep the cores busy (no waiting on servers): one worker per core, not make test's three.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -n 2 -m "not engine and not e2e"

bench: $(STAMP)
	$(BIN)/python -m bench.run_all

clean:
	rm -rf $(VENV) build *.egg-info
